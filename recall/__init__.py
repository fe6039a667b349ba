"""recall: a YouTube-DNN style two-tower retrieval trainer (sampled softmax, faiss recall@K, export).

Python API mirroring the CLI:

    cfg = recall.load_config("configs/quickstart.yaml", ["train.epochs=3"])
    metrics = recall.train(cfg)              # recall train
    recall.evaluate(cfg.run_dir)             # recall evaluate
    recall.export(cfg.run_dir)               # recall export
"""

__version__ = "0.1.0"

from recall.config import load_config  # noqa: E402  (light: no TensorFlow import)


def train(cfg, run_dir=None, on_epoch=None):
    """Train, evaluate and export; see `recall.pipeline.train` (`cfg.warm_start`: start from a parent run)."""
    from recall.pipeline import train as _train

    return _train(cfg, run_dir, on_epoch=on_epoch)


def evaluate(run_dir, factory=None):
    """Re-evaluate a run directory; see `recall.pipeline.evaluate`."""
    from recall.pipeline import evaluate as _evaluate

    return _evaluate(run_dir, factory)


def export(run_dir, out_dir=None):
    """Write a run's export bundle; see `recall.pipeline.export`."""
    from recall.pipeline import export as _export

    return _export(run_dir, out_dir)


__all__ = ["__version__", "evaluate", "export", "load_config", "train"]
