"""This process's place in a multi-worker job, read from `TF_CONFIG` as clusters set it.

    TF_CONFIG = {"cluster": {"worker": ["host0:port", "host1:port", ...]},
                 "task": {"type": "worker", "index": i}}

Kubeflow's TFJob, Vertex AI and SageMaker set it per process; `recall train --workers N` sets a
loopback one per local process (distributed/launcher.py). Worker 0 is the chief (a "chief" task,
when the cluster names one, is the chief instead and counts as a worker too): it alone writes the
run directory. Without `TF_CONFIG` there is no cluster and training runs in one process as always.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from recall.errors import RecallError

# A collective that waits longer than this for a peer fails (a killed worker must not hang the job).
COLLECTIVE_TIMEOUT_ENV = "RECALL_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Cluster:
    """num_workers (every task that trains), index of this task among them (0 = chief), the raw spec."""

    num_workers: int
    index: int
    spec: dict

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def cluster_from_env(environ=None) -> Cluster | None:
    """The `TF_CONFIG` of this process as a Cluster; None when it is unset or empty.

    A malformed `TF_CONFIG` is a RecallError naming what is wrong (a user or a cluster template set it).
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise RecallError(f"TF_CONFIG: not valid JSON ({err.msg} at character {err.pos}); expected "
                          '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}') from None
    cluster, task = (spec.get("cluster"), spec.get("task")) if isinstance(spec, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise RecallError('TF_CONFIG: needs "cluster" and "task" objects, e.g. {"cluster": {"worker": '
                          '["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}')
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise RecallError(f"TF_CONFIG: cluster job {unknown[0]!r} is not supported; recall trains with "
                          "MultiWorkerMirroredStrategy (jobs 'worker' and optionally one 'chief'), not parameter servers")
    chief, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    if len(chief) > 1:
        raise RecallError(f"TF_CONFIG: cluster.chief lists {len(chief)} addresses; a cluster has at most one chief")
    kind, index = task.get("type"), task.get("index", 0)
    jobs = {"chief": chief, "worker": workers}
    if kind not in jobs or not isinstance(index, int) or not 0 <= index < len(jobs[kind]):
        raise RecallError(f"TF_CONFIG: task {task} is not in the cluster (type 'worker' with an index below "
                          f"{len(workers)}{', or chief 0' if chief else ''})")
    position = index if kind == "chief" else len(chief) + index
    return Cluster(num_workers=len(chief) + len(workers), index=position, spec=spec)


def collective_timeout(environ=None) -> float:
    """Seconds within which a lost worker ends the job (env RECALL_COLLECTIVE_TIMEOUT, default 60)."""
    raw = (os.environ if environ is None else environ).get(COLLECTIVE_TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_COLLECTIVE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise RecallError(f"{COLLECTIVE_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds, e.g. 120")
    return value


def make_strategy(timeout: float | None = None):
    """A MultiWorkerMirroredStrategy over the TF_CONFIG cluster, on which a lost worker ends the job
    within `timeout` seconds (RECALL_COLLECTIVE_TIMEOUT, default 60) with an error instead of hanging it.
    Call it before TensorFlow runs any op: it configures the process's collective runtime.

    How: TF's own health check of the cluster pings every peer and, when one does not answer, aborts
    every pending collective with UnavailableError. recall runs it every timeout/4 seconds with a
    timeout/8-second probe (TF tries 3 times), so a dead or hung peer is declared lost within
    5/8 of `timeout`; a peer whose process is gone is usually reported sooner by gRPC itself.

    Not a per-collective timeout (`CommunicationOptions(timeout_seconds=...)`): TF 2.21 then keeps a
    thread alive per collective for as long as the timeout, and at the hundreds of collectives a
    second a training step issues the workers run out of threads and abort ("std::system_error:
    Resource temporarily unavailable"; measured: 16,204 threads per worker 80 s after a small job was launched).
    """
    import tensorflow as tf
    from tensorflow.python.distribute import collective_all_reduce_strategy as impl

    seconds = collective_timeout() if timeout is None else timeout
    # Class attributes TF's health-check thread reads (TF's own multi-worker tests set them the same way).
    impl.CollectiveAllReduceExtended._check_health_interval = max(1.0, seconds / 4)
    impl.CollectiveAllReduceExtended._check_health_timeout = max(1, int(seconds / 8))
    return tf.distribute.MultiWorkerMirroredStrategy()


@contextlib.contextmanager
def peers_lost_as_error(index: int, num_workers: int, run_dir):
    """Turn the error a collective raises when another worker died (it refused the connection, or
    did not answer within the collective timeout) into a one-line RecallError for this worker."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError) as err:
        detail = next((line.strip() for line in str(err.message).splitlines() if line.strip()), type(err).__name__)
        raise RecallError(f"worker {index} of {num_workers}: lost contact with the other workers "
                          f"({type(err).__name__}: {detail[:160]}); restart every worker to resume from the "
                          f"chief's last checkpoint in {run_dir}/checkpoints") from None
