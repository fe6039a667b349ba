"""benchmarks/quality.py checks every variant's config before the first trains; a bad one: one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_bad_second_variant_is_refused_before_the_first_trains(tmp_path):
    log = tmp_path / "interactions.csv"
    rows = [f"{u},{(u * 37 + t * 11) % 300},{t}" for u in range(80) for t in range(12)]
    log.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "quality.json"
    # --modes gives two variants: the first (sequences) would train, the second sets train.batching to
    # a value that does not exist. It must be refused before the first trains: no run directory, no JSON.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--skip-full", "--modes", "sequences,by_day",
         "--set", f"data.path={log}", "--set", "data.user_features=null", "--set", "train.epochs=1", "--set", "loss.num_sampled=50",
         "--work-dir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdin=subprocess.DEVNULL)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and "train.batching" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "work").exists()
