"""Transparent huge pages for the big tables: `recall train` restarts itself once with glibc's
`glibc.malloc.hugetlb=1` tunable (Linux, glibc ≥ 2.35, THP in `madvise` mode).

Why: a step reads and writes rows of the item table and of the optimiser's two moment slots at
random — at 10M items × dim 32 three arrays of 1.2 GiB each. With 4 KiB pages nearly every such row
access also misses the TLB; with 2 MiB pages the page walk goes away. On the catalogue-scaling
benchmark (DeepMatch shape, lazy Adam) the 10M-item step ran 6.2–6.4 ms instead of 7.2–7.3 (fastest
tenth of the timed calls); at 1M items the gain is within the spread between processes, and the
peak memory is the same (benchmarks/RESULTS.md). Results do not change: only where the memory sits.

How: TensorFlow allocates tensors with `malloc`, and glibc hands big allocations out as `mmap`ed
chunks. Most kernels ship THP in `madvise` mode (huge pages only where a program asks with
`madvise(MADV_HUGEPAGE)`), and glibc asks for its chunks only when the tunable is set, which glibc
reads once at process start — so the process has to start again with it. `os.execve` replaces the
process in place (same pid, same stdin/stdout/stderr, same exit code), before TensorFlow is imported,
with `sys.executable` (the same interpreter and virtual environment) and the same arguments.

Off when: `RECALL_HUGE_PAGES` is 0/false/off/no; not Linux or not glibc ≥ 2.35; THP `always`
(already on) or `never`; `GLIBC_TUNABLES` already says something about `glibc.malloc.hugetlb` (the
user's choice wins); this process is the restarted one (`RECALL_HUGE_PAGES_RESTARTED`, in case glibc
drops the tunable, as it does for privileged binaries); or the command line cannot be replayed
(a program read from stdin, an embedding or wrapper whose `sys.argv` is not the interpreter's).
Library users (`recall.train` from Python) can set `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` themselves.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
ENV_SWITCH = "RECALL_HUGE_PAGES"  # 0 / false / off / no turn the restart off
RESTARTED = "RECALL_HUGE_PAGES_RESTARTED"  # set in the restarted process: never a second restart
_OFF = ("0", "false", "off", "no")
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_MIN_GLIBC = (2, 35)  # the first glibc with the `glibc.malloc.hugetlb` tunable

log = logging.getLogger(__name__)


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode ("always", "madvise" or "never": the bracketed word), None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library if it is glibc, else None (musl, macOS, Windows)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError, TypeError):
        return None


def wanted(env: Mapping[str, str] | None = None, mode: str | None = None,
           glibc: tuple[int, int] | None = None, platform: str | None = None) -> bool:
    """Would a restart with the tunable help here? (The arguments default to this machine.)"""
    env = os.environ if env is None else env
    if env.get(ENV_SWITCH, "1").strip().lower() in _OFF or env.get(RESTARTED):
        return False
    if any(t.startswith("glibc.malloc.hugetlb=") for t in env.get("GLIBC_TUNABLES", "").split(":")):
        return False  # set already: by the user (their value wins) or by a restart
    if (platform or sys.platform) != "linux":
        return False
    glibc = glibc_version() if glibc is None else glibc
    if glibc is None or glibc < _MIN_GLIBC:
        return False
    return (thp_mode() if mode is None else mode) == "madvise"


def environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) with the tunable added when `wanted`: for child processes."""
    env = dict(os.environ if env is None else env)
    if wanted(env):
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), TUNABLE]))
    return env


def restart_with_huge_pages(execv: Callable[[str, list[str], dict], None] = os.execve) -> None:
    """Replace this process with the same command plus the tunable, if `wanted`; else return.

    Call it first thing in a command's entry point, before TensorFlow is imported (it would be loaded
    twice otherwise). The command is `sys.executable` + `sys.orig_argv[1:]` (the interpreter's own
    options such as `-m`, `-X`, `-W` kept), replayed only when it ends with this process's `sys.argv[1:]`
    and does not read the program from stdin. If the exec fails, a warning says why and training goes
    on without huge pages.
    """
    if not wanted():
        return
    orig = list(getattr(sys, "orig_argv", []) or [])
    args = sys.argv[1:]
    if len(orig) < 2 or "-" in orig[1:len(orig) - len(args)] or (args and orig[-len(args):] != args):
        return  # an embedded interpreter, a program from stdin, or a wrapper that rewrote sys.argv
    env = {**environ(), RESTARTED: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execv(sys.executable, [sys.executable, *orig[1:]], env)
    except OSError as e:
        # Called before logging is configured: Python's last-resort handler prints this on stderr.
        log.warning("huge pages: could not restart %s with GLIBC_TUNABLES=%s (%s); training continues without "
                    "huge pages (set %s=0 to skip the restart)", sys.executable, TUNABLE, e.strerror or e, ENV_SWITCH)
