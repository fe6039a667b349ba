"""`recall train CONFIG --workers N`: a multi-worker job on this machine, for a laptop and the tests.

Starts N `python -m recall train ...` processes, each with a loopback `TF_CONFIG` naming all N
(ports picked free by binding port 0) and its own task index — exactly what a cluster gives each of
its machines. Worker 0 (the chief) prints to this terminal; worker i > 0 writes
`RUN_DIR/logs/worker-i.log`. Every wait is bounded: when one worker fails, the others get
`grace` seconds to end (their collectives time out, distributed/cluster.py) and are then killed by
pid; Ctrl-C (which the terminal also sends to the workers) ends them the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from recall.errors import RecallError


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that were free a moment ago (bound to port 0 at once, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def tf_configs(ports: list[int], host: str = "127.0.0.1") -> list[str]:
    """The TF_CONFIG (JSON) of each of len(ports) workers on `host`: worker i is task index i."""
    cluster = {"worker": [f"{host}:{p}" for p in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(ports))]


def launch(train_args: list[str], workers: int, run_dir: Path, grace: float = 90.0, poll: float = 0.2,
           stdout=None, verbose: bool = False) -> int:
    """Run `python -m recall train *train_args` as `workers` local workers → the job's exit code.

    0 when every worker ends with 0; otherwise the first failing worker's code (a one-line message on
    stderr says which worker and where its log is). `train_args` must name the run directory
    (`--run-dir`), which every worker shares.
    """
    if workers < 1:
        raise RecallError(f"--workers {workers}: give at least 1 worker process")
    if os.environ.get("TF_CONFIG", "").strip():
        raise RecallError("--workers: TF_CONFIG is already set in the environment, so this process is a worker of "
                          "a cluster; unset TF_CONFIG to launch local workers, or drop --workers")
    logs = Path(run_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "recall", *(["-v"] if verbose else []), "train", *train_args]
    procs, files = [], []
    try:
        for i, config in enumerate(tf_configs(free_ports(workers))):
            env = {**os.environ, "TF_CONFIG": config}
            out = stdout
            if i > 0:
                out = open(logs / f"worker-{i}.log", "w")  # noqa: SIM115 (closed in finally)
                files.append(out)
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if i else None))
        return _wait(procs, logs, grace, poll)
    except KeyboardInterrupt:
        _end(procs, grace=10.0)
        raise
    finally:
        _end(procs, grace=0.0)
        for f in files:
            f.close()


def _wait(procs: list, logs: Path, grace: float, poll: float) -> int:
    """Until all end, or one fails and the others had `grace` seconds to follow → the job's exit code."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, code = failed[0]
            deadline = time.monotonic() + grace
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(poll)
            if any(p.poll() is None for p in procs):
                print(f"launcher: workers still running {grace:.0f} s after worker {i} failed; killing them",
                      file=sys.stderr)
            where = "above" if i == 0 else f"in {logs / f'worker-{i}.log'}"
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            last = "" if i == 0 else _last_line(logs / f"worker-{i}.log")
            print(f"error: worker {i} of {len(procs)} {how}{': ' + last if last else ''} "
                  f"(its output is {where})", file=sys.stderr)
            return code if code > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        if codes[0] == 0:  # the chief is done (and wrote the run): the others end with it
            deadline = time.monotonic() + grace
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(poll)
            late = [i for i, p in enumerate(procs) if p.poll() is None]
            if late:
                print(f"launcher: worker(s) {late} still running {grace:.0f} s after the chief finished; killing "
                      "them (the run directory is complete)", file=sys.stderr)
                return 0
            continue
        time.sleep(poll)


def _end(procs: list, grace: float) -> None:
    """Wait up to `grace` s for each started process, then SIGKILL the ones left, by pid."""
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait()


def _last_line(path: Path) -> str:
    """The last `error: ...` line of a worker's log, without the prefix ("" if it has none)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    return (errors or [""])[-1][:300]
