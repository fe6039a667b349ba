"""The synthetic generator: shape, determinism, popularity skew, and a signal a model can learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recall.data import item_catalogue, read_interactions, synthesize, write_interactions
from recall.errors import RecallError


@pytest.fixture(scope="module")
def default() -> pd.DataFrame:
    return synthesize()


def top_decile_share(df: pd.DataFrame, num_items: int) -> float:
    counts = np.sort(np.bincount(df["item_id"], minlength=num_items))[::-1]
    return counts[: num_items // 10].sum() / counts.sum()


def hit_rates(df: pd.DataFrame, num_items: int = 1000, num_topics: int = 20, k: int = 10):
    """HR@k on each user's last item of two predictors fitted on the rest, unseen items only:
    most-popular, and most-popular within the topic of the user's last training item."""
    topic_of, _ = item_catalogue(num_items, num_topics)
    last = df.groupby("user_id").tail(1)
    train = df.drop(last.index)
    by_popularity = np.argsort(-np.bincount(train["item_id"], minlength=num_items), kind="stable")
    in_topic = {t: by_popularity[topic_of[by_popularity] == t] for t in range(num_topics)}
    seen = train.groupby("user_id")["item_id"].agg(set)
    previous = train.groupby("user_id")["item_id"].last()
    hits_pop = hits_topic = 0
    for user, target in zip(last["user_id"], last["item_id"], strict=True):
        s = seen[user]
        pop = [i for i in by_popularity[: k + len(s)] if i not in s][:k]
        topic = [i for i in in_topic[topic_of[previous[user]]] if i not in s][:k]
        hits_pop += target in pop
        hits_topic += target in topic
    return hits_pop / len(last), hits_topic / len(last)


def test_shape_and_dtypes(default):
    assert list(default.columns) == ["user_id", "item_id", "timestamp"]
    assert all(default[c].dtype == np.int64 for c in default.columns)
    assert default["user_id"].nunique() == 2000
    assert default["item_id"].between(0, 999).all()
    lengths = default.groupby("user_id").size()
    assert lengths.min() >= 3
    assert lengths.mean() == pytest.approx(30.0, rel=0.1)
    assert lengths.std() > 10  # lengths vary, like real users


def test_sequences_are_ordered_and_never_repeat_an_item(default):
    assert default["user_id"].is_monotonic_increasing
    assert (default.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    assert not default.duplicated(["user_id", "item_id"]).any()
    assert default["timestamp"].min() > 1_000_000_000  # plausible Unix seconds


def test_same_seed_same_frame(default):
    pd.testing.assert_frame_equal(synthesize(seed=0), default)
    assert not synthesize(seed=1).equals(default)


def test_size_follows_the_arguments():
    df = synthesize(num_users=300, num_items=50, interactions_per_user=8, num_topics=5, seed=3)
    assert df["user_id"].nunique() == 300 and df["item_id"].max() < 50
    assert len(df) / 300 == pytest.approx(8, rel=0.15)


def test_item_catalogue():
    topic, popularity = item_catalogue(1000, 20, popularity_exponent=1.0)
    assert np.bincount(topic).tolist() == [50] * 20  # balanced topics
    assert popularity.sum() == pytest.approx(1.0)
    ranked = np.sort(popularity)[::-1]
    assert ranked[0] / ranked[1] == pytest.approx(2.0)  # Zipf: rank^-1
    assert ranked[0] / ranked[9] == pytest.approx(10.0)
    assert not np.all(np.diff(popularity) <= 0)  # ranks are shuffled over item ids


def test_popularity_skew(default):
    # The no-repeat rule flattens a small catalogue (users exhaust their topics' hits) ...
    assert top_decile_share(default, 1000) > 0.25
    assert top_decile_share(synthesize(popularity_exponent=0.0), 1000) < 0.15
    # ... a larger one keeps a MovieLens-like skew (ML-1M positives: 0.52).
    big = synthesize(num_users=3000, num_items=10_000)
    assert top_decile_share(big, 10_000) > 0.5


def test_next_item_is_predictable_from_the_last_topic(default):
    hr_pop, hr_topic = hit_rates(default)
    assert hr_topic > 0.3
    assert hr_topic > 3 * hr_pop
    # The signal comes from the topic walk: with drift=1 every step redraws the topic.
    _, hr_topic_no_walk = hit_rates(synthesize(drift=1.0))
    assert hr_topic_no_walk < hr_topic / 2


def test_invalid_arguments_name_the_field():
    with pytest.raises(RecallError, match=r"data\.synthetic\.drift"):
        synthesize(drift=1.5)
    with pytest.raises(RecallError, match=r"data\.synthetic\.num_users"):
        synthesize(num_users=0)


def test_write_and_read_back(tmp_path, default):
    write_interactions(default, tmp_path / "synth.parquet")
    pd.testing.assert_frame_equal(read_interactions(tmp_path / "synth.parquet"), default)
