"""Atomic writes and the run-directory lock."""

import os

import pytest

from recall.errors import RecallError
from recall.io import atomic_path, run_dir_lock, write_json


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_second_holder_of_a_run_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    with run_dir_lock(run):
        with pytest.raises(RecallError, match=rf"in use by another `recall train` \(pid {os.getpid()}\)"):
            with run_dir_lock(run):
                pass
    with run_dir_lock(run):  # released when the holder leaves
        pass
