"""recall/hugepages.py: when `recall train` restarts itself with glibc's huge-page tunable, and that the
restarted process really gets huge pages (on a machine that has them)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from recall import hugepages

ON = {"mode": "madvise", "glibc": (2, 36), "platform": "linux"}


@pytest.mark.parametrize("text, mode", [
    ("always [madvise] never\n", "madvise"),
    ("[always] madvise never\n", "always"),
    ("always madvise [never]\n", "never"),
    ("garbled\n", None),
])
def test_thp_mode_reads_the_bracketed_word(tmp_path, text, mode):
    f = tmp_path / "enabled"
    f.write_text(text)
    assert hugepages.thp_mode(f) == mode


def test_thp_mode_without_the_file_is_unknown(tmp_path):
    assert hugepages.thp_mode(tmp_path / "missing") is None


def test_wanted_only_where_a_restart_helps(monkeypatch):
    assert hugepages.wanted({}, **ON)
    for off in ("0", "false", "Off", "no"):
        assert not hugepages.wanted({"RECALL_HUGE_PAGES": off}, **ON)  # the user's switch
    assert hugepages.wanted({"RECALL_HUGE_PAGES": "1"}, **ON)
    # already there (a restarted process, or the user set it): no second restart
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, **ON)
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}, **ON)
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **ON)  # the user's value wins
    assert hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **ON)
    # the restarted process, even if glibc dropped the tunable (privileged binaries): never a loop
    assert not hugepages.wanted({"RECALL_HUGE_PAGES_RESTARTED": "1"}, **ON)
    assert not hugepages.wanted({}, **{**ON, "mode": "always"})  # every big mapping has them already
    assert not hugepages.wanted({}, **{**ON, "mode": "never"})
    monkeypatch.setattr(hugepages, "thp_mode", lambda: None)  # no THP file (a container without sysfs)
    assert not hugepages.wanted({}, **{**ON, "mode": None})
    assert not hugepages.wanted({}, **{**ON, "glibc": (2, 34)})  # no such tunable before 2.35
    assert not hugepages.wanted({}, **{**ON, "platform": "darwin"})


def test_environ_appends_to_existing_tunables(monkeypatch):
    monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(sys, "platform", "linux")
    env = hugepages.environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "PATH": "/bin"}
    assert hugepages.environ({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert "GLIBC_TUNABLES" not in hugepages.environ({"RECALL_HUGE_PAGES": "0"})


def _machine_with_thp(monkeypatch, orig_argv, argv):
    monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", argv)
    for name in ("GLIBC_TUNABLES", "RECALL_HUGE_PAGES", "RECALL_HUGE_PAGES_RESTARTED"):
        monkeypatch.delenv(name, raising=False)


def test_restart_replaces_the_process_with_the_same_command(monkeypatch):
    _machine_with_thp(monkeypatch, ["python", "-X", "utf8", "-m", "recall", "train", "c.yaml"],
                      ["/x/recall/__main__.py", "train", "c.yaml"])
    calls = []
    hugepages.restart_with_huge_pages(lambda *a: calls.append(a))
    assert len(calls) == 1
    path, argv, env = calls[0]
    # the interpreter by its full path (keeps a virtual environment), its options, the same arguments
    assert path == sys.executable and argv == [sys.executable, "-X", "utf8", "-m", "recall", "train", "c.yaml"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["RECALL_HUGE_PAGES_RESTARTED"] == "1"

    calls.clear()
    monkeypatch.setenv("RECALL_HUGE_PAGES", "0")
    hugepages.restart_with_huge_pages(lambda *a: calls.append(a))
    assert calls == []  # switched off: carries on in this process


def test_console_script_restarts_as_itself(monkeypatch):
    _machine_with_thp(monkeypatch, ["/venv/bin/python", "/venv/bin/recall", "train", "c.yaml"],
                      ["/venv/bin/recall", "train", "c.yaml"])
    calls = []
    hugepages.restart_with_huge_pages(lambda *a: calls.append(a))
    assert calls[0][1] == [sys.executable, "/venv/bin/recall", "train", "c.yaml"]


@pytest.mark.parametrize("orig_argv, argv", [
    (["python", "-", "train", "c.yaml"], ["-", "train", "c.yaml"]),  # program from stdin: cannot be replayed
    (["python", "wrapper.py", "--mine"], ["recall", "train", "c.yaml"]),  # a wrapper rewrote sys.argv
    ([], ["recall", "train", "c.yaml"]),  # an embedded interpreter
])
def test_no_restart_when_the_command_cannot_be_replayed(monkeypatch, orig_argv, argv):
    _machine_with_thp(monkeypatch, orig_argv, argv)
    calls = []
    hugepages.restart_with_huge_pages(lambda *a: calls.append(a))
    assert calls == []


def test_a_failed_exec_carries_on_without_huge_pages_and_says_why(monkeypatch, caplog):
    _machine_with_thp(monkeypatch, ["python", "-m", "recall", "train", "c.yaml"], ["m.py", "train", "c.yaml"])

    def refuse(*_):
        raise PermissionError(13, "Permission denied")

    with caplog.at_level(logging.WARNING, logger="recall.hugepages"):
        hugepages.restart_with_huge_pages(refuse)  # returns: training goes on
    assert [r.getMessage() for r in caplog.records] == [
        f"huge pages: could not restart {sys.executable} with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
        "(Permission denied); training continues without huge pages (set RECALL_HUGE_PAGES=0 to skip the restart)"]


def test_only_a_train_process_of_its_own_restarts(monkeypatch, tmp_path):
    # main([...]) (tests, notebooks) and the other commands never restart.
    from recall import cli

    calls = []
    monkeypatch.setattr(hugepages, "restart_with_huge_pages", lambda *a: calls.append(a))
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    monkeypatch.setattr(sys, "argv", ["recall", "data", "synth", "--out", str(tmp_path / "x.csv"), "--users", "5",
                                      "--items", "5", "--per-user", "3"])
    assert cli.main() == 0
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["recall", "train", str(tmp_path / "missing.yaml")])
    assert cli.main() == 2
    assert len(calls) == 1


@pytest.mark.skipif(not hugepages.wanted(os.environ.copy() | {"RECALL_HUGE_PAGES": "1", "GLIBC_TUNABLES": ""}),
                    reason="this machine has no THP in madvise mode or glibc < 2.35: nothing to restart for")
def test_restarted_process_gets_huge_pages_in_place():
    # The same script before and after the restart: same pid, the tunable set, and a big array
    # (as TensorFlow's tables are: one malloc'ed chunk) backed by 2 MiB pages.
    script = textwrap.dedent("""
        import os, sys
        print("pid", os.getpid(), flush=True)
        from recall.hugepages import restart_with_huge_pages
        restart_with_huge_pages()
        import numpy as np
        table = np.ones((1_000_000, 32), np.float32)  # 128 MiB
        huge = [line.split()[1] for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages")]
        print("tunables", os.environ.get("GLIBC_TUNABLES"))
        print("huge_kib", huge[0], float(table.sum()))
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "RECALL_HUGE_PAGES", "RECALL_HUGE_PAGES_RESTARTED")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    pids = [ln for ln in lines if ln.startswith("pid ")]
    assert len(pids) == 2 and pids[0] == pids[1]  # ran twice, as one process
    assert "tunables glibc.malloc.hugetlb=1" in lines
    huge_kib = int(next(ln for ln in lines if ln.startswith("huge_kib")).split()[1])
    assert huge_kib >= 64 * 1024  # most of the 128 MiB table sits on huge pages

    # Switched off: runs once, 4 KiB pages.
    out = subprocess.run([sys.executable, "-c", script], env={**env, "RECALL_HUGE_PAGES": "0"},
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert len([ln for ln in lines if ln.startswith("pid ")]) == 1
    assert "tunables None" in lines
