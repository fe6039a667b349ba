"""Data-parallel training on several workers: TensorFlow's MultiWorkerMirroredStrategy under `TF_CONFIG`.

- `cluster.py`: the `TF_CONFIG` a cluster sets → which worker this process is; the strategy.
- `replicas.py`: what a step does per replica — its slice of the global batch, the global batch's labels.
- `collect.py`: sums and all-gathers of numpy arrays over the workers, outside the step (what a job
  sharded by user agrees on: the vocabulary, the step count, the evaluation counts; data/shards.py).
- `launcher.py`: `recall train CONFIG --workers N`, N local worker processes on loopback ports.
"""
