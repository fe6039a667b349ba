"""The leave-last-out split and the frequency-sorted vocabulary (DESIGN.md "Evaluation protocol")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recall.data.split import build_vocabulary, leave_last_out, raw_to_internal
from recall.errors import RecallError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML1M = SHARED_DATA / "ml-1m"


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


# (user, item, timestamp), deliberately shuffled.
#   user 10: (7,50) (3,100) (5,100) (9,200) (2,300) → tie at t=100 broken by item id: train [7, 3, 5], valid 9, test 2
#   user 20: (3,10) (5,20) (3,30) (8,40)              → train [3, 5], valid 3 (a repeat), test 8
#   user 30: two interactions                         → dropped
#   user 40: (5,1) (7,2) (1,3) (3,4)                  → train [5, 7], valid 1, test 3
# Train counts: 5×3, 3×2, 7×2 → vocabulary [5, 3, 7] (3 before 7: tie broken by raw id).
LOG = frame([
    (40, 3, 4), (10, 9, 200), (20, 8, 40), (10, 5, 100), (30, 1, 1), (40, 1, 3), (20, 3, 30),
    (10, 2, 300), (20, 5, 20), (10, 3, 100), (40, 7, 2), (30, 2, 2), (20, 3, 10), (10, 7, 50),
    (40, 5, 1),
])


def user_rows(split, u):
    lo, hi = split.train_indptr[u], split.train_indptr[u + 1]
    return split.item_ids[split.train_items[lo:hi]].tolist()


def test_users_with_fewer_than_three_interactions_are_dropped():
    split = leave_last_out(LOG)
    assert split.user_ids.tolist() == [10, 20, 40]
    assert split.num_users == 3


def test_vocabulary_is_train_frequency_descending_ties_by_raw_id():
    split = leave_last_out(LOG)
    assert split.item_ids.tolist() == [5, 3, 7]
    assert split.item_counts.tolist() == [3, 2, 2]
    assert split.num_items == 3
    assert split.item_counts.dtype == np.int64


def test_train_valid_test_per_user():
    split = leave_last_out(LOG)
    assert [user_rows(split, u) for u in range(3)] == [[7, 3, 5], [3, 5], [5, 7]]
    assert split.train_lengths.tolist() == [3, 2, 2]
    assert split.train_indptr.tolist() == [0, 3, 5, 7]
    # internal ids: 5 → 0, 3 → 1, 7 → 2; 9, 2, 8, 1 are not train items → -1
    assert split.valid_items.tolist() == [-1, 1, -1]
    assert split.test_items.tolist() == [-1, -1, 1]
    assert split.train_items.dtype == np.int32
    assert split.valid_items.dtype == np.int32 and split.test_items.dtype == np.int32


def test_train_times_follow_the_train_rows():
    split = leave_last_out(LOG)
    assert split.train_times.tolist() == [50, 100, 100, 10, 20, 1, 2]


def test_timestamp_ties_are_broken_by_item_id_at_the_boundary():
    # Last two events share a timestamp: the larger item id is the test item.
    split = leave_last_out(frame([(1, 4, 1), (1, 9, 5), (1, 2, 5), (1, 4, 0)]))
    assert user_rows(split, 0) == [4, 4]  # valid 2, test 9: neither in train
    assert split.valid_items.tolist() == [-1] and split.test_items.tolist() == [-1]
    split = leave_last_out(frame([(1, 4, 1), (1, 9, 5), (1, 2, 5), (1, 9, 0), (1, 2, 0)]))
    assert user_rows(split, 0) == [2, 9, 4]
    assert split.item_ids[split.valid_items[0]] == 2 and split.item_ids[split.test_items[0]] == 9


def test_extra_columns_and_row_order_do_not_matter():
    shuffled = LOG.sample(frac=1.0, random_state=3).assign(rating=4.0)
    a, b = leave_last_out(LOG), leave_last_out(shuffled)
    for field in ("train_items", "train_times", "train_indptr", "valid_items", "test_items", "user_ids",
                  "item_ids", "item_counts"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_string_raw_ids():
    # Same log with string ids: ties are broken by the string order ("i3" < "i5").
    log = LOG.assign(user_id="u" + LOG.user_id.astype(str), item_id="i" + LOG.item_id.astype(str))
    split = leave_last_out(log)
    assert split.user_ids.tolist() == ["u10", "u20", "u40"]
    assert split.item_ids.tolist() == ["i5", "i3", "i7"]
    assert [user_rows(split, u) for u in range(3)] == [["i7", "i3", "i5"], ["i3", "i5"], ["i5", "i7"]]
    assert split.valid_items.tolist() == [-1, 1, -1]
    assert split.test_items.tolist() == [-1, -1, 1]


def test_string_ids_order_lexicographically():
    split = leave_last_out(frame([("u", "b", 1), ("u", "a", 1), ("u", "c", 2), ("u", "d", 3)]))
    assert user_rows(split, 0) == ["a", "b"]


def test_min_interactions_parameter():
    split = leave_last_out(LOG, min_interactions=5)
    assert split.user_ids.tolist() == [10]


def test_all_users_too_short_is_a_recall_error():
    with pytest.raises(RecallError, match="at least 3 interactions"):
        leave_last_out(frame([(1, 1, 1), (1, 2, 2), (2, 1, 1)]))


def test_build_vocabulary_and_lookup():
    ids, counts = build_vocabulary(np.array([4, 1, 4, 2, 2, 9, 4]))
    assert ids.tolist() == [4, 2, 1, 9] and counts.tolist() == [3, 2, 1, 1]
    assert raw_to_internal(ids, np.array([9, 4, 5, 1, 0, 100])).tolist() == [3, 0, -1, 2, -1, -1]
    assert raw_to_internal(ids, np.array([], dtype=np.int64)).tolist() == []
    assert raw_to_internal(np.array([], dtype=np.int64), np.array([1])).tolist() == [-1]


def test_random_log_matches_brute_force():
    rng = np.random.default_rng(7)
    n = 400
    df = frame(zip(rng.integers(0, 40, n), rng.integers(0, 30, n), rng.integers(0, 20, n), strict=True))
    split = leave_last_out(df)
    per_user = {}
    for u, i, _t in sorted(df.itertuples(index=False, name=None), key=lambda r: (r[0], r[2], r[1])):
        per_user.setdefault(u, []).append(i)
    kept = {u: s for u, s in per_user.items() if len(s) >= 3}
    assert split.user_ids.tolist() == sorted(kept)
    train_all = [i for s in kept.values() for i in s[:-2]]
    counts = pd.Series(train_all).value_counts()
    expected_vocab = sorted(counts.index, key=lambda i: (-counts[i], i))
    assert split.item_ids.tolist() == expected_vocab
    internal = {raw: k for k, raw in enumerate(expected_vocab)}
    for row, u in enumerate(split.user_ids):
        seq = kept[u]
        assert user_rows(split, row) == seq[:-2]
        assert split.valid_items[row] == internal.get(seq[-2], -1)
        assert split.test_items[row] == internal.get(seq[-1], -1)


@pytest.mark.skipif(not (ML1M / "split_reference.parquet").is_file() or not (ML1M / "ratings_pos4.parquet").is_file(),
                    reason=f"ML-1M reference split not found under {ML1M} (shared data absent)")
def test_split_matches_ml1m_reference():
    from recall.data.readers import read_interactions

    split = leave_last_out(read_interactions(ML1M / "ratings_pos4.parquet"))
    ref = pd.read_parquet(ML1M / "split_reference.parquet").sort_values("user_id").reset_index(drop=True)
    assert split.num_users == len(ref) == 6035
    assert split.num_items == 3525
    np.testing.assert_array_equal(split.user_ids, ref["user_id"].to_numpy())
    np.testing.assert_array_equal(split.train_lengths, ref["n_train"].to_numpy())
    # The reference holds raw ids; an item outside the train vocabulary is -1 on our side.
    for ours, col in ((split.valid_items, "valid_item_id"), (split.test_items, "test_item_id")):
        raw = ref[col].to_numpy()
        expected = raw_to_internal(split.item_ids, raw)
        np.testing.assert_array_equal(ours, expected, err_msg=col)
        known = ours >= 0
        np.testing.assert_array_equal(split.item_ids[ours[known]], raw[known], err_msg=col)
    assert np.all(np.diff(split.item_counts) <= 0)
