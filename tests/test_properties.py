"""Property tests (hypothesis): whatever a user feeds the config loader or the data readers, the
only exception is the intended `RecallError` (one line); anything accepted is valid downstream.

(a) random nested dicts — real section/field names mixed with typos, wrong types, None, huge ints,
    inf/nan, strings — through `config_from_dict`, and random `--set` texts through `load_config`;
(b) random small frames — random column names and dtypes, NaNs, strings in numeric columns, empty
    frames — written as CSV (any delimiter) or Parquet, through `read_interactions` then `leave_last_out`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from recall.config import Config, config_from_dict, dump_config, load_config
from recall.data.readers import read_interactions
from recall.data.split import leave_last_out
from recall.errors import RecallError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- (a) configs ----------------------------------------------------------------------------------


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted field path of a config model, sections included ('train', 'train.epochs', …)."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        out.append(path)
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += _fields(arg, f"{path}.")
    return out


PATHS = _fields(Config)
NAMES = sorted({p.rsplit(".", 1)[-1] for p in PATHS})
# Values a config might plausibly hold: they get past type checks so cross-field rules are reached too.
PLAUSIBLE = st.sampled_from([
    0, 1, 2, 3, 5, 10, 50, 1000, -1, 0.5, 1e-3, True, False, "", "file", "builtin", "synthetic", "csv",
    "in_batch", "mixed", "unigram", "nce", "neg", "full_softmax", "hr@10", "ndcg@5", "hr@50", "Flat",
    "IVF4,Flat", [10, 20], [5], [], [0], [64, 32], {}, {"zip_code": 2},
])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | PLAUSIBLE)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), inner, max_size=3),
                      max_leaves=8)


def _section(depth: int):
    keys = st.sampled_from(NAMES) | st.text(max_size=10)
    child = VALUES if depth == 0 else (VALUES | _section(depth - 1))
    return st.dictionaries(keys, child, max_size=5)


@st.composite
def _mutated_defaults(draw) -> dict:
    """A valid config dict with 1–4 random edits (set a dotted path to any value, drop a key): the
    near-valid inputs that reach the cross-field rules."""
    raw = Config().to_dict()
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS) | st.builds(lambda p, k: f"{p}.{k}", st.sampled_from(PATHS),
                                                        st.text(max_size=6)))
        *parents, leaf = path.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if draw(st.integers(0, 9)) == 0:
            node.pop(leaf, None)
        else:
            node[leaf] = draw(PLAUSIBLE | SCALARS | VALUES)
    return raw


RAW_CONFIGS = st.one_of(VALUES, _section(2), _mutated_defaults(), _mutated_defaults())


def _check_valid(cfg: Config) -> None:
    """An accepted config is fully usable: hashable, and its saved YAML reloads to the same config."""
    assert isinstance(cfg, Config)
    again = config_from_dict(yaml.safe_load(dump_config(cfg)), "config.yaml")
    assert again.to_dict() == cfg.to_dict() and again.hash() == cfg.hash()


@FAST
@given(raw=RAW_CONFIGS)
def test_config_from_dict_accepts_or_raises_recall_error(raw):
    try:
        cfg = config_from_dict(raw)
    except RecallError as e:
        assert str(e) and "\n" not in str(e)
        return
    _check_valid(cfg)


OVERRIDE_KEYS = st.sampled_from(PATHS) | st.builds(".".join, st.lists(st.sampled_from(NAMES) | st.text(max_size=6),
                                                                         max_size=3))
OVERRIDE_VALUES = (st.text(max_size=15)
                   | SCALARS.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("..."))
                   | st.sampled_from(["[1, 2", "{a: 1", "&a [*a]", ".nan", "-.inf", "1e999", "0x10", "~", "'x"]))
OVERRIDES = st.lists(st.builds(lambda k, v: f"{k}={v}", OVERRIDE_KEYS, OVERRIDE_VALUES) | st.text(max_size=20),
                     max_size=4)


@FAST
@given(overrides=OVERRIDES)
def test_set_overrides_accept_or_raise_recall_error(overrides):
    try:
        cfg = load_config(None, overrides)
    except RecallError as e:
        assert str(e) and "\n" not in str(e)
        return
    _check_valid(cfg)


# --- (b) data readers -----------------------------------------------------------------------------

COLUMN_NAMES = st.sampled_from(["user_id", "item_id", "timestamp", "rating", "userId", "movieId", "x"]) \
    | st.text(min_size=1, max_size=8)


@st.composite
def columns(draw, n: int):
    kind = draw(st.sampled_from(["int", "int", "int", "float", "nan_float", "text", "mixed", "bool", "datetime",
                                 "big_int"]))
    if kind == "int":  # few distinct values, so users reach 3 interactions and items repeat
        return draw(st.lists(st.integers(0, 3) | st.integers(-5, 20), min_size=n, max_size=n))
    if kind == "big_int":
        return draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
    if kind == "float":
        return draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([1.0, 2.0, 3.5]),
                             min_size=n, max_size=n))
    if kind == "nan_float":
        return draw(st.lists(st.sampled_from([1.0, 2.0, np.nan, np.inf]), min_size=n, max_size=n))
    if kind == "text":
        return draw(st.lists(st.text(max_size=6) | st.sampled_from(["1", "2", "a", "2024-01-02", ""]),
                             min_size=n, max_size=n))
    if kind == "mixed":  # strings in a numeric column
        return draw(st.lists(st.sampled_from([1, 2, 3, "x", None, "4"]), min_size=n, max_size=n))
    if kind == "bool":
        return draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return list(pd.to_datetime(draw(st.lists(st.integers(0, 2_000_000_000), min_size=n, max_size=n)), unit="s"))


@st.composite
def frames(draw) -> pd.DataFrame:
    n = draw(st.integers(0, 16))
    names = draw(st.lists(COLUMN_NAMES, min_size=0, max_size=5, unique=True))
    if draw(st.integers(0, 4)):  # usually the expected columns, so the later checks are reached
        names = list(dict.fromkeys(["user_id", "item_id", "timestamp", *(["rating"] if draw(st.booleans()) else []),
                                    *names]))
    return pd.DataFrame({name: draw(columns(n)) for name in names}, index=range(n))


@FAST
@given(df=frames(), fmt=st.sampled_from(["csv", "parquet"]), sep=st.sampled_from([",", ";", "\t", "|"]),
       given_sep=st.sampled_from([None] * 6 + [",", ";", "\t", "|", "::"]),
       min_rating=st.sampled_from([None] * 4 + [0.0, 2.0]))
def test_read_then_split_accepts_or_raises_recall_error(df, fmt, sep, given_sep, min_rating):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"log.{fmt}"
        try:
            if fmt == "csv":
                df.to_csv(path, index=False, sep=sep)
            else:
                df.to_parquet(path, index=False)
        except (ValueError, TypeError, ArithmeticError) as e:  # pyarrow refuses mixed object columns
            assume(e is None)
        try:
            out = read_interactions(path, delimiter=given_sep if fmt == "csv" else None, min_rating=min_rating)
        except RecallError as e:
            assert str(e) and "\n" not in str(e)
            return
        _check_interactions(out)
        try:
            split = leave_last_out(out)
        except RecallError as e:
            assert "at least 3 interactions" in str(e)
            assert out.groupby("user_id").size().max() < 3
            return
        _check_split(split, out)


def _check_interactions(df: pd.DataFrame) -> None:
    assert list(df.columns[:3]) == ["user_id", "item_id", "timestamp"] and len(df) > 0
    assert df["timestamp"].dtype == np.int64
    for col in ("user_id", "item_id"):
        assert df[col].dtype == np.int64 or df[col].map(type).eq(str).all(), df[col].dtype
        assert not df[col].isna().any()
    assert not df.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert df.index.tolist() == list(range(len(df)))


def _check_split(split, df: pd.DataFrame) -> None:
    kept = (df.groupby("user_id").size() >= 3).sum()
    assert split.num_users == kept > 0
    lengths = split.train_lengths
    assert (lengths >= 1).all() and split.train_indptr[-1] == len(split.train_items)
    assert ((split.train_items >= 0) & (split.train_items < split.num_items)).all()
    assert (np.diff(split.item_counts) <= 0).all() and split.item_counts.sum() == len(split.train_items)
    for held in (split.valid_items, split.test_items):
        assert len(held) == kept and ((held >= -1) & (held < split.num_items)).all()
