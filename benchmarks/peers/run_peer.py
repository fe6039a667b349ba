"""Run a peer system's throughput script in its own virtualenv, from recall's environment.

    from benchmarks.peers.run_peer import tfrs_rate      # or: sys.path has benchmarks/peers
    r = tfrs_rate("../shared/data/ml-1m/ratings_pos4.parquet", epochs=3, timeout=900)
    # → {"system": "TFRS 0.7.7 two-tower", "examples_per_sec": ..., ...} or None

The TFRS venv is `$RECALL_PEERS_TFRS`, else ~/.cache/recall-peers/tfrs (made by setup_tfrs.sh).
Only the standard library is imported here: nothing of recall, TensorFlow or TFRS.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger("recall.peers")

HERE = Path(__file__).resolve().parent
TFRS_SCRIPT = HERE / "tfrs_throughput.py"
DEFAULT_TFRS_VENV = Path.home() / ".cache" / "recall-peers" / "tfrs"


def tfrs_venv() -> Path:
    return Path(os.environ.get("RECALL_PEERS_TFRS") or DEFAULT_TFRS_VENV).expanduser()


def peer_env() -> dict[str, str]:
    """This process's environment, minus what belongs to recall's interpreter and runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if env.pop("RECALL_HUGE_PAGES_RESTARTED", None):  # recall added glibc.malloc.hugetlb=1 to itself
        tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
                    if t and not t.startswith("glibc.malloc.hugetlb=")]
        env["GLIBC_TUNABLES"] = ":".join(tunables)
        if not tunables:
            del env["GLIBC_TUNABLES"]
    env["TF_USE_LEGACY_KERAS"] = "1"  # TFRS needs Keras 2 (tf-keras) behind tf.keras
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def tfrs_rate(data_path: str | os.PathLike, epochs: int = 3, timeout: float = 900,
              evaluate: bool = False, venv: str | os.PathLike | None = None) -> dict | None:
    """TFRS two-tower examples/s on `data_path` (ML-1M positives), trained `epochs` epochs at batch 1024.

    Returns tfrs_throughput.py's JSON (plus "wall_seconds" and "python"), or None — with the reason
    logged as a warning — when the venv is absent, the run fails, prints no JSON or exceeds `timeout`
    seconds (then the child, which runs in its own session, is killed by its process id).
    `evaluate=True` adds test HR@K / NDCG@K (a few seconds more).
    """
    python = Path(venv).expanduser() / "bin" / "python" if venv else tfrs_venv() / "bin" / "python"
    if not python.exists():
        log.warning("TFRS peer skipped: no virtualenv at %s (run `bash benchmarks/peers/setup_tfrs.sh`, "
                    "or point RECALL_PEERS_TFRS at one)", python.parent.parent)
        return None
    if not Path(data_path).exists():
        log.warning("TFRS peer skipped: no data at %s", data_path)
        return None
    cmd = [str(python), str(TFRS_SCRIPT), str(data_path), "--epochs", str(int(epochs))]
    cmd += ["--eval"] if evaluate else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=peer_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group id is the child's pid
        except ProcessLookupError:
            pass
        proc.communicate()
        log.warning("TFRS peer timed out after %.0f s (pid %d killed)", timeout, proc.pid)
        return None
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(err.strip().splitlines()[-3:])
        log.warning("TFRS peer failed (exit %s): %s", proc.returncode, tail or "no output")
        return None
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        log.warning("TFRS peer printed unreadable JSON (%s): %.200s", e, lines[-1])
        return None
    return {**result, "wall_seconds": round(time.perf_counter() - t0, 1), "python": str(python)}


if __name__ == "__main__":  # python benchmarks/peers/run_peer.py DATA [EPOCHS] [TIMEOUT]
    import sys

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    r = tfrs_rate(sys.argv[1], *(int(a) for a in sys.argv[2:3]), *(float(a) for a in sys.argv[3:4]))
    print(json.dumps(r))
    sys.exit(0 if r else 1)
