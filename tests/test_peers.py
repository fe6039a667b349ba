"""benchmarks/peers/run_peer.py: how recall's benchmarks call a peer's script in another virtualenv.
A fake venv whose `python` is a shell script stands in for TFRS (no TensorFlow needed)."""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_peer", ROOT / "benchmarks" / "peers" / "run_peer.py")
run_peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_peer)


def fake_venv(tmp_path: Path, body: str) -> Path:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + body + "\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "venv"


@pytest.fixture
def data(tmp_path):
    f = tmp_path / "ratings.parquet"
    f.write_bytes(b"")
    return f


def test_absent_venv_is_none_with_the_reason(tmp_path, data, caplog):
    with caplog.at_level(logging.WARNING, "recall.peers"):
        assert run_peer.tfrs_rate(data, 1, 10, venv=tmp_path / "nowhere") is None
    assert "no virtualenv" in caplog.text and "setup_tfrs.sh" in caplog.text


def test_default_venv_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_PEERS_TFRS", str(tmp_path / "x"))
    assert run_peer.tfrs_venv() == tmp_path / "x"


def test_last_json_line_is_returned_with_the_arguments_passed(tmp_path, data):
    venv = fake_venv(tmp_path, 'echo progress >&2; echo "not json"\n'
                               'echo "{\\"examples_per_sec\\": 1.5, \\"argv\\": \\"$*\\", '
                               '\\"legacy\\": \\"$TF_USE_LEGACY_KERAS\\"}"')
    r = run_peer.tfrs_rate(data, 2, 30, evaluate=True, venv=venv)
    assert r["examples_per_sec"] == 1.5 and r["legacy"] == "1"
    assert r["argv"] == f"{run_peer.TFRS_SCRIPT} {data} --epochs 2 --eval"
    assert r["python"] == str(venv / "bin" / "python") and r["wall_seconds"] >= 0


def test_failure_is_none_with_stderr_tail(tmp_path, data, caplog):
    venv = fake_venv(tmp_path, "echo 'ImportError: no tf_keras' >&2; exit 3")
    with caplog.at_level(logging.WARNING, "recall.peers"):
        assert run_peer.tfrs_rate(data, 1, 30, venv=venv) is None
    assert "exit 3" in caplog.text and "no tf_keras" in caplog.text


def test_timeout_kills_the_child(tmp_path, data, caplog):
    pidfile = tmp_path / "pid"
    venv = fake_venv(tmp_path, f"echo $$ > {pidfile}; exec sleep 60")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, "recall.peers"):
        assert run_peer.tfrs_rate(data, 1, 1, venv=venv) is None
    assert time.monotonic() - t0 < 30 and "timed out" in caplog.text
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped by communicate)


def test_peer_env_drops_recalls_interpreter_and_huge_page_restart(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("RECALL_HUGE_PAGES_RESTARTED", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    env = run_peer.peer_env()
    assert "PYTHONPATH" not in env and "GLIBC_TUNABLES" not in env and env["TF_USE_LEGACY_KERAS"] == "1"
