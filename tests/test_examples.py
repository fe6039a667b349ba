"""Training examples, evaluation queries and user feature codes, checked against brute-force loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.data.examples import PAD, history_matrix, make_examples, make_queries
from recall.data.features import empty_features, encode_user_features
from recall.data.split import leave_last_out


def random_split(seed: int, users: int = 25, items: int = 15, rows: int = 300):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "user_id": rng.integers(0, users, rows),
        "item_id": rng.integers(0, items, rows),
        "timestamp": rng.integers(0, 1000, rows),
    })
    return leave_last_out(df)


def sequences(split):
    """Per user row: (train items, train times) as Python lists."""
    p = split.train_indptr
    return [(split.train_items[p[u]:p[u + 1]].tolist(), split.train_times[p[u]:p[u + 1]].tolist())
            for u in range(split.num_users)]


def brute_force_examples(split, max_history, min_history=1, max_per_user=None):
    """[(user, label, history list, time)] by a plain loop over every user's train sequence."""
    out = []
    for u, (seq, times) in enumerate(sequences(split)):
        for t in range(len(seq)):
            if t < min_history:
                continue
            if max_per_user is not None and len(seq) - 1 - t >= max_per_user:
                continue
            out.append((u, seq[t], seq[max(0, t - max_history):t], times[t]))
    return out


def padded(history, max_history):
    return [PAD] * (max_history - len(history)) + list(history)


def check_examples(split, max_history, min_history=1, max_per_user=None):
    ex = make_examples(split, max_history, min_history, max_per_user)
    expected = brute_force_examples(split, max_history, min_history, max_per_user)
    assert len(ex) == len(expected)
    seq = split.train_items
    for e, (u, label, hist, _) in enumerate(expected):
        assert ex.user[e] == u
        assert seq[ex.label_pos[e]] == label
        lo = ex.label_pos[e] - ex.hist_len[e]
        assert seq[lo:ex.label_pos[e]].tolist() == hist
    if len(ex):
        matrix = history_matrix(seq, ex.label_pos, ex.hist_len.astype(np.int64), max_history)
        assert matrix.shape == (len(ex), max_history) and matrix.dtype == np.int32
        assert matrix.tolist() == [padded(h, max_history) for _, _, h, _ in expected]
    return ex, expected


# --- make_examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_history", [1, 3, 50])
def test_examples_match_brute_force(seed, max_history):
    check_examples(random_split(seed), max_history)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), max_history=st.integers(1, 8), min_history=st.integers(0, 5),
       max_per_user=st.one_of(st.none(), st.integers(1, 6)))
def test_examples_match_brute_force_property(seed, max_history, min_history, max_per_user):
    check_examples(random_split(seed, users=8, items=6, rows=60), max_history, min_history, max_per_user)


def test_history_never_sees_the_label_or_later():
    split = random_split(3)
    ex = make_examples(split, max_history=4)
    start_of_user = split.train_indptr[ex.user]
    lo = ex.label_pos - ex.hist_len
    assert np.all(lo >= start_of_user)  # never reaches into the previous user's rows
    assert np.all(ex.label_pos < split.train_indptr[ex.user + 1])
    matrix = history_matrix(split.train_items, ex.label_pos, ex.hist_len.astype(np.int64), 4)
    cols = np.arange(4)
    positions = ex.label_pos[:, None] - 4 + cols[None, :]  # train row each history column came from
    used = matrix != PAD
    assert np.all(positions[used] < np.repeat(ex.label_pos[:, None], 4, axis=1)[used])
    assert np.all(positions[used] >= np.repeat(start_of_user[:, None], 4, axis=1)[used])


def test_min_history_and_max_per_user():
    split = random_split(4)
    lengths = split.train_lengths
    assert len(make_examples(split, 5, min_history=0)) == lengths.sum()
    assert len(make_examples(split, 5, min_history=1)) == np.maximum(lengths - 1, 0).sum()
    assert len(make_examples(split, 5, min_history=3)) == np.maximum(lengths - 3, 0).sum()
    ex = make_examples(split, 5, min_history=0, max_per_user=2)
    assert len(ex) == np.minimum(lengths, 2).sum()
    # the kept ones are each user's latest
    assert np.all(ex.label_pos >= split.train_indptr[ex.user + 1] - 2)
    ex, _ = check_examples(split, 5, min_history=2, max_per_user=3)
    assert np.all(ex.hist_len >= 2)


def test_min_history_zero_gives_empty_first_history():
    split = random_split(5)
    ex, expected = check_examples(split, 3, min_history=0)
    first = ex.label_pos == split.train_indptr[ex.user]
    assert np.all(ex.hist_len[first] == 0)
    assert first.sum() == split.num_users


def test_example_age():
    split = random_split(6)
    ex = make_examples(split, 5, min_history=0)
    assert ex.age.dtype == np.float32
    assert np.all((ex.age >= 0) & (ex.age <= 1))
    times = split.train_times[ex.label_pos]
    np.testing.assert_allclose(ex.age[times == times.max()], 0.0)
    np.testing.assert_allclose(ex.age[times == times.min()], 1.0)
    t_min, t_max = split.train_times.min(), split.train_times.max()
    np.testing.assert_allclose(ex.age, (t_max - times) / (t_max - t_min), rtol=1e-6)
    # newer example → smaller age
    order = np.argsort(times, kind="stable")
    assert np.all(np.diff(ex.age[order]) <= 0)


def test_history_matrix_edge_cases():
    seq = np.array([10, 11, 12, 13], dtype=np.int32)
    m = history_matrix(seq, np.array([3, 4, 1]), np.array([2, 3, 0]), 3)
    assert m.tolist() == [[PAD, 11, 12], [11, 12, 13], [PAD, PAD, PAD]]
    empty = history_matrix(np.zeros(0, np.int32), np.array([0]), np.array([0]), 2)
    assert empty.tolist() == [[PAD, PAD]]


def test_example_batcher_matches_brute_force():
    tf = pytest.importorskip("tensorflow")
    from recall.training.inputs import ExampleBatcher, epoch_blocks

    split = random_split(8)
    max_history = 4
    ex, expected = check_examples(split, max_history)
    codes = np.arange(split.num_users * 2, dtype=np.int32).reshape(split.num_users, 2)
    batcher = ExampleBatcher(split.train_items, ex, codes, max_history)
    idx = np.random.default_rng(0).permutation(len(ex)).astype(np.int64)
    features, labels, weights = batcher(tf.constant(idx[:37]))
    np.testing.assert_array_equal(weights.numpy(), np.ones(37, np.float32))  # no weight column: every example 1
    for row, e in enumerate(idx[:37]):
        u, label, hist, _ = expected[e]
        assert int(labels[row]) == label
        assert features["history"][row].numpy().tolist() == padded(hist, max_history)
        assert features["user_features"][row].numpy().tolist() == codes[u].tolist()
        assert float(features["age"][row]) == pytest.approx(float(ex.age[e]))
    # the loop's blocks (3 batches of 16 per block, then the partial one) cover every example once
    seen_labels, seen_hist = [], []
    for block in epoch_blocks(idx, 16, done=0, steps_per_block=3, step=0):
        for batch in block:
            f, y, _ = batcher(tf.constant(batch))
            seen_labels += y.numpy().tolist()
            seen_hist += f["history"].numpy().tolist()
    assert seen_labels == [expected[e][1] for e in idx]
    assert seen_hist == [padded(expected[e][2], max_history) for e in idx]
    assert features["history"].dtype == tf.int32 and labels.dtype == tf.int64


@pytest.mark.parametrize("n,batch,k,every,done,step", [
    (100, 8, 4, 0, 0, 0),     # 12 full batches + 4 left over
    (100, 8, 4, 5, 0, 0),     # checkpoints every 5 steps cut the blocks
    (100, 8, 16, 5, 7, 31),   # resumed mid-epoch: 7 batches done, global step 31
    (96, 8, 5, 0, 0, 0),      # no partial batch
    (100, 8, 4, 0, 12, 12),   # only the partial batch is left
])
def test_epoch_blocks_cover_the_rest_of_the_epoch_once(n, batch, k, every, done, step):
    from recall.training.inputs import epoch_blocks

    order = np.random.default_rng(n + k).permutation(n).astype(np.int64)
    blocks = list(epoch_blocks(order, batch, done, k, step, every))
    flat = np.concatenate([b.ravel() for b in blocks])
    np.testing.assert_array_equal(flat, order[done * batch:])  # in order, nothing skipped or repeated
    for b in blocks[:-1]:
        assert b.shape[1] == batch and b.shape[0] in (1, k)  # the compiled block's only shapes
    steps_after = step + np.cumsum([b.shape[0] for b in blocks])
    if every:  # every multiple of `every` passed is the end of some block
        passed = range((step // every + 1) * every, int(steps_after[-1]) + 1, every)
        assert set(passed) <= set(steps_after.tolist())
    if n % batch:
        assert blocks[-1].shape == (1, n % batch)


# --- make_queries ------------------------------------------------------------------------------------


def seen_lists(queries):
    indptr, ids = queries.seen
    return [ids[indptr[q]:indptr[q + 1]].tolist() for q in range(len(indptr) - 1)]


@pytest.mark.parametrize("max_history", [1, 2, 4, 100])
def test_valid_queries_are_the_train_sequence(max_history):
    split = random_split(9)
    q = make_queries(split, "valid", max_history)
    seqs = [s for s, _ in sequences(split)]
    assert q.targets.tolist() == split.valid_items.tolist()
    assert q.history.tolist() == [padded(s[-max_history:], max_history) for s in seqs]
    assert seen_lists(q) == seqs  # whole history, not just the last max_history
    assert q.history.dtype == np.int32 and q.targets.dtype == np.int32


@pytest.mark.parametrize("max_history", [1, 3, 100])
def test_test_queries_append_the_validation_item(max_history):
    split = random_split(10)
    q = make_queries(split, "test", max_history)
    full = [s + ([int(v)] if v >= 0 else []) for (s, _), v in zip(sequences(split), split.valid_items, strict=True)]
    assert q.targets.tolist() == split.test_items.tolist()
    assert q.history.tolist() == [padded(s[-max_history:], max_history) for s in full]
    assert seen_lists(q) == full


def test_out_of_vocabulary_validation_item_is_skipped_in_test_history():
    # user 1: train [5, 3, 7], valid 9 (not a train item), test 3
    # user 2: train [3, 5],   valid 7, test 8
    df = pd.DataFrame(
        [(1, 5, 1), (1, 3, 2), (1, 7, 3), (1, 9, 4), (1, 3, 5), (2, 3, 1), (2, 5, 2), (2, 7, 3), (2, 8, 4)],
        columns=["user_id", "item_id", "timestamp"],
    )
    split = leave_last_out(df)
    ids = {raw: i for i, raw in enumerate(split.item_ids.tolist())}
    assert split.valid_items.tolist() == [-1, ids[7]]
    q = make_queries(split, "test", 3)
    assert q.history.tolist() == [[ids[5], ids[3], ids[7]], [ids[3], ids[5], ids[7]]]
    assert seen_lists(q) == [[ids[5], ids[3], ids[7]], [ids[3], ids[5], ids[7]]]
    assert q.targets.tolist() == [ids[3], -1]
    v = make_queries(split, "valid", 3)
    assert v.history.tolist() == [[ids[5], ids[3], ids[7]], [PAD, ids[3], ids[5]]]
    assert v.targets.tolist() == [-1, ids[7]]


def test_make_queries_rejects_unknown_split():
    with pytest.raises(ValueError, match="valid"):
        make_queries(random_split(0), "train", 3)


# --- user features -----------------------------------------------------------------------------------


def test_encode_user_features():
    table = pd.DataFrame(
        {"gender": ["F", "M", "F", ""], "zip": ["10", "94", "10", "33"]},
        index=pd.Index([1, 2, 3, 4], name="user_id"),
    )
    feats = encode_user_features(table, np.array([3, 99, 1, 2, 4]))  # 99 is not in the table
    assert feats.names == ["gender", "zip"]
    assert [v.tolist() for v in feats.vocabs] == [["F", "M"], ["10", "33", "94"]]
    assert feats.sizes == [2, 3]
    # code = 1 + position in the sorted vocabulary; 0 = unknown user or empty value
    assert feats.codes.tolist() == [[1, 1], [0, 0], [1, 1], [2, 3], [0, 2]]
    assert feats.codes.dtype == np.int32
    encoded = feats.encode({"gender": np.array(["M", "X", "F"]), "zip": np.array(["94", "94", "00"])})
    assert encoded.tolist() == [[2, 3], [0, 3], [1, 0]]


def test_encode_user_features_only_counts_kept_users_in_vocab():
    table = pd.DataFrame({"occ": ["a", "b", "c"]}, index=pd.Index(["u1", "u2", "u3"], name="user_id"))
    feats = encode_user_features(table, np.array(["u3", "u1"]))
    assert feats.vocabs[0].tolist() == ["a", "c"]
    assert feats.codes.tolist() == [[2], [1]]
    assert feats.encode({"occ": np.array(["b"])}).tolist() == [[0]]


def test_empty_features():
    feats = empty_features(4)
    assert feats.codes.shape == (4, 0) and feats.sizes == [] and feats.names == []
