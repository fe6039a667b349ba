"""Shared fixtures: one small trained run with ML-1M-shaped user features (serving and export parity tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pre_recipe import PRE_RECIPE

REGIONS = ["48", "55", "02", "70"]  # zip-code prefixes: "48067" is served as "48", as trained


def write_feature_log(root: Path, users: int = 300, items: int = 80, seed: int = 0) -> tuple[Path, Path]:
    """A log whose users' tastes follow their features, and an ML-1M-shaped users table.

    users.parquet: user_id, gender (F/M), age (ML-1M buckets, int), occupation (0–20, int), zip_code
    (5 digits, str: a region prefix from REGIONS + 3 random digits, so the full codes are nearly all
    distinct and only the 2-character prefix generalises). Each user's taste topic (of 8) is a function
    of (zip region, gender); half of their 6–10 interactions are items of that topic, half random, so the
    features carry signal the history alone does not.
    """
    rng = np.random.default_rng(seed)
    rows, table = [], []
    for u in range(1, users + 1):
        region, gender = int(rng.integers(len(REGIONS))), str(rng.choice(["F", "M"]))
        topic = 2 * region + (gender == "M")
        table.append((u, gender, int(rng.choice([1, 18, 25, 35, 45, 50, 56])), int(rng.integers(21)),
                      REGIONS[region] + f"{int(rng.integers(1000)):03d}"))
        n = int(rng.integers(6, 11))
        topical = rng.choice(np.arange(topic, items, 8), size=n - n // 2, replace=False)
        noise = rng.choice(items, size=n // 2, replace=False)
        picks = list(dict.fromkeys(int(i) for i in rng.permutation(np.r_[topical, noise])))
        rows += [(u, i + 100, 1000 * u + t) for t, i in enumerate(picks)]
    log, users_file = root / "log.parquet", root / "users.parquet"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_parquet(log)
    pd.DataFrame(table, columns=["user_id", "gender", "age", "occupation", "zip_code"]).to_parquet(users_file)
    return log, users_file


def feature_config(log: Path, users_file: Path, *overrides: str):
    import recall

    return recall.load_config(None, [
        "data.source=file", f"data.path={log}", f"data.user_features.path={users_file}",
        "data.user_features.columns=[gender,age,occupation,zip_code]", "data.user_features.prefix={zip_code: 2}",
        "model.dim=16", "model.hidden=[32]", "model.max_history=10", "model.feature_dim=8",
        "model.history=[{kind: mean}, {kind: recent, window: 3}]", *PRE_RECIPE,
        "loss.num_sampled=20", "train.epochs=6", "train.batch_size=64", "train.learning_rate=0.01",
        "train.early_stopping=null", "eval.ks=[5,10,20]", "eval.batch_size=512",
        "train.steps_per_execution=2", *overrides])  # a shorter compiled block: the same updates, less tracing


@pytest.fixture(scope="session")
def features_run(tmp_path_factory):
    """(run_dir, metrics) of a small trained run with user features (zip_code prefix 2); do not modify it."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("faiss")
    import recall

    root = tmp_path_factory.mktemp("features_run")
    cfg = feature_config(*write_feature_log(root))
    metrics = recall.train(cfg, root / "run")
    return root / "run", metrics
