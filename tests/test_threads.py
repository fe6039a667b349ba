"""train.intra_op_threads / inter_op_threads reach TensorFlow's thread pools, or say why not."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")

PROBE = """
import logging, sys
import tensorflow as tf
from recall.pipeline import _set_threads
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
if sys.argv[1] == "late":
    tf.constant(1.0) + 1.0  # TensorFlow has started its pools
_set_threads(1, 2)
print("threads", tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def _probe(when: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, when], capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", **__import__("os").environ})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_threads_are_set_before_tensorflow_starts():
    assert "threads 1 2" in _probe("early")


def test_threads_after_tensorflow_started_are_refused_with_a_warning():
    out = _probe("late")
    assert "WARNING train.intra_op_threads=1 not applied" in out
    assert "threads 1 2" not in out
