"""Data-parallel training on several workers: TensorFlow's MultiWorkerMirroredStrategy under `TF_CONFIG`.

- `cluster.py`: the `TF_CONFIG` a cluster sets → which worker this process is; the strategy.
- `replicas.py`: what a step does per replica — its slice of the global batch, the global batch's labels.
- `launcher.py`: `recall train CONFIG --workers N`, N local worker processes on loopback ports.
"""
