"""benchmarks/recipes.py without training: every recipe × dataset is a valid config, the noise rule,
and a stored row with an unchanged config is not run again."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

from recall.config import Config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("recipes_benchmark", ROOT / "benchmarks" / "recipes.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _args(tmp_path, quick=False):
    return argparse.Namespace(quick=quick, ml1m=str(tmp_path / "absent.parquet"), ml100k=str(tmp_path / "absent"))


def test_every_recipe_on_every_dataset_is_a_valid_config(tmp_path):
    from recall.config import config_from_dict

    for quick in (False, True):
        found = bench.datasets(_args(tmp_path, quick), tmp_path)
        assert ("ml-1m-short" in found) != quick
        if not quick:  # absent files are skipped with the reason, not an error
            assert found["ml-1m-short"][1] is None and "not found" in found["ml-1m-short"][2]
            assert found["ml-100k"][1] is None
        for ds, (_, data, _) in found.items():
            if data is None:
                continue
            for name in bench.RECIPES:
                cfg = config_from_dict(bench.build_config(data, bench.recipe_sections(name), quick), f"{ds}/{name}")
                assert cfg.train.epochs == 1 if quick else cfg.train.epochs >= 10
                if data["source"] == "synthetic":  # every recipe's negatives fit the catalogue
                    assert cfg.loss.num_sampled < cfg.data.synthetic.num_items


def test_summary_marks_the_best_and_what_is_within_two_standard_errors():
    rows = [{"dataset": "d", "recipe": r, "valid_hr@50": p, "users": 400} for r, p in
            [("a", 0.50), ("b", 0.46), ("c", 0.44)]]
    se = math.sqrt(0.5 * 0.5 / 400)  # 0.025: b is 1.6 SE below a, c 2.4
    s = bench.summarise(rows)
    assert s["datasets"]["d"] == {"best": "a", "best_valid_hr@50": 0.50, "se": se}
    assert s["recipes"]["b"]["gaps"]["d"] == round(0.04 / se, 2) and s["recipes"]["b"]["within_noise"] == ["d"]
    assert s["recipes"]["c"]["within_noise"] == [] and s["recipes"]["a"]["best"] == ["d"]


def test_a_stored_row_with_the_same_config_is_skipped_and_a_twin_reuses_it(tmp_path, capsys, monkeypatch):
    args = _args(tmp_path, quick=True)
    data = bench.datasets(args, tmp_path)["synth-sticky"][1]
    cfg = bench.build_config(data, bench.recipe_sections("quickstart"), quick=True)
    row = {"dataset": "synth-sticky", "recipe": "quickstart", "config_hash": bench.config_hash(cfg),
           "valid_hr@50": 0.3, "valid_hr@10": 0.1, "hr@10": 0.1, "hr@50": 0.3, "users": 500, "epochs": 1,
           "train_seconds": 1.0, "sampler_kl": None}
    out = tmp_path / "recipes.json"
    out.write_text(json.dumps({"results": [row]}))
    # "copy" spells out defaults the quickstart leaves implicit: it resolves to the same config
    copy = bench.recipe_sections("quickstart")
    copy["model"]["tie_embeddings"] = Config().model.tie_embeddings
    monkeypatch.setitem(bench.RECIPES, "copy", ("the quickstart, spelled out", copy))
    assert bench.main(["--quick", "--recipes", "quickstart,copy", "--datasets", "synth-sticky",
                       "--work-dir", str(tmp_path / "w"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0 run(s) to do (1 stored)" in printed and "copy (= quickstart)" in printed
    assert json.loads(out.read_text())["results"] == [row, {**row, "recipe": "copy", "same_run_as": "quickstart"}]
