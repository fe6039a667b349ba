"""Each history encoder's causal form (one pass over a chunk) against its per-position form.

For every labelled position of a chunk, the per-position tower is run on that position's own history
(the items before it, the latest max_history, right-aligned) and must give the causal pass's query
for that position to 1e-5 — for every exact encoder, alone and composed, with and without user
features, with chunks that start at a user's first item (left padding) and end early (partial).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recall.model import ItemTower, UserTower
from recall.model.encoders.base import band_matrix

NUM_ITEMS, DIM, MAX_HISTORY, LENGTH = 40, 8, 12, 6

EXACT = {
    "mean": [{"kind": "mean"}],
    "mean-window": [{"kind": "mean", "window": 4}],
    "recent": [{"kind": "recent", "window": 3}],
    "last_items": [{"kind": "last_items", "window": 3}],
    "attention": [{"kind": "attention"}],
    "attention-window": [{"kind": "attention", "window": 5}],
    "min_gru": [{"kind": "min_gru", "window": 6}],
    "min_gru-heads": [{"kind": "min_gru", "window": 12, "heads": 2}],
    "transformer": [{"kind": "transformer", "band": 4, "blocks": 2, "heads": 2, "dropout": 0.0}],
    "transformer-full": [{"kind": "transformer", "band": 12, "blocks": 1, "dropout": 0.0}],
    "shipped-shape": [{"kind": "mean"}, {"kind": "recent", "window": 5}, {"kind": "min_gru", "window": 8},
                      {"kind": "last_items", "window": 1}],
}


def make_tower(history, features=(3, 5), tied=True, seed=0):
    tf.keras.utils.set_random_seed(seed)
    items = ItemTower(NUM_ITEMS, DIM, name="items")
    user = UserTower(NUM_ITEMS, DIM, [16], MAX_HISTORY, history=history, feature_sizes=list(features),
                     feature_dim=4, shared_items=items if tied else None, name="user")
    user({"history": tf.fill([1, MAX_HISTORY], -1), "age": tf.zeros([1]),
          "user_features": tf.zeros([1, len(features)], tf.int32)})
    return user


def make_chunks(rng, num_chunks=5, features=(3, 5)):
    """Chunks [C, S] with left padding of varied lengths (a user's start) and a partial last chunk."""
    columns = MAX_HISTORY + LENGTH
    items = rng.integers(0, NUM_ITEMS, size=(num_chunks, columns)).astype(np.int32)
    starts = [0, 3, MAX_HISTORY - 1, MAX_HISTORY, 7][:num_chunks]  # first real column of each chunk
    labelled = np.ones((num_chunks, LENGTH), bool)
    for c, start in enumerate(starts):
        items[c, :start] = -1
    labelled[-1, 4:] = False  # a user's last chunk: only 4 labelled positions
    items[-1, MAX_HISTORY + 4:] = -1
    codes = np.zeros((num_chunks, len(features)), np.int32)
    for f, n in enumerate(features):
        codes[:, f] = rng.integers(0, n + 1, size=num_chunks)
    age = rng.random((num_chunks, LENGTH)).astype(np.float32)
    return items, labelled, codes, age


def per_position_queries(user, items, labelled, codes, age):
    """The per-position tower on each labelled position's own history: [R, D] in row-major order."""
    histories, rows_codes, rows_age = [], [], []
    for c in range(items.shape[0]):
        for pos in range(LENGTH):
            if not labelled[c, pos]:
                continue
            before = items[c, :MAX_HISTORY + pos]
            before = before[before >= 0][-MAX_HISTORY:]
            histories.append(np.r_[np.full(MAX_HISTORY - len(before), -1), before])
            rows_codes.append(codes[c])
            rows_age.append(age[c, pos])
    return user({"history": tf.constant(np.array(histories), tf.int32), "age": tf.constant(rows_age),
                 "user_features": tf.constant(np.array(rows_codes).reshape(len(rows_codes), -1), tf.int32)}).numpy()


def causal_queries(user, items, labelled, codes, age):
    return user.causal({"items": tf.constant(items), "labelled": tf.constant(labelled),
                        "user_features": tf.constant(codes), "age": tf.constant(age)}).numpy()


@pytest.mark.parametrize("history", EXACT.values(), ids=EXACT.keys())
def test_causal_form_equals_per_position_form(history):
    rng = np.random.default_rng(1)
    user = make_tower(history)
    assert user.exact_causal
    batch = make_chunks(rng)
    want = per_position_queries(user, *batch)
    got = causal_queries(user, *batch)
    assert got.shape == want.shape == (int(batch[1].sum()), DIM)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_untied_tower_without_features_is_exact_too():
    rng = np.random.default_rng(2)
    user = make_tower(EXACT["shipped-shape"], features=(), tied=False)
    batch = make_chunks(rng, features=())
    np.testing.assert_allclose(causal_queries(user, *batch), per_position_queries(user, *batch), atol=1e-5)


def test_a_wrong_window_is_caught():
    """The comparison can fail: the causal mean over 4 items is not the per-position mean over 5."""
    rng = np.random.default_rng(3)
    four, five = make_tower([{"kind": "mean", "window": 4}]), make_tower([{"kind": "mean", "window": 5}])
    batch = make_chunks(rng)
    assert np.abs(causal_queries(four, *batch) - per_position_queries(five, *batch)).max() > 1e-3


def test_running_gru_matches_at_each_chunks_first_position_only():
    """The GRU's causal form runs along the chunk (documented in encoders/gru.py): the first labelled
    position of a chunk sees exactly the latest `window` items, later ones see more."""
    rng = np.random.default_rng(4)
    user = make_tower([{"kind": "gru", "window": 4}])
    assert not user.exact_causal
    items, labelled, codes, age = make_chunks(rng, num_chunks=4)
    labelled[:] = True
    want = per_position_queries(user, items, labelled, codes, age).reshape(4, LENGTH, DIM)
    got = causal_queries(user, items, labelled, codes, age).reshape(4, LENGTH, DIM)
    np.testing.assert_allclose(got[:, 0], want[:, 0], atol=1e-5)
    assert np.abs(got[:, 2:] - want[:, 2:]).max() > 1e-4  # they see items past the window


def test_band_matrix_by_hand():
    # 2 labelled positions at columns 3 and 4 of 5; window 2: position 3 reads columns 1, 2; position 4 reads 2, 3.
    np.testing.assert_array_equal(band_matrix(2, 5, 2), [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0]])


@pytest.mark.parametrize("width", [0, 1, 5, MAX_HISTORY, MAX_HISTORY + 7])
@pytest.mark.parametrize("history", [EXACT["transformer"], EXACT["attention"], EXACT["shipped-shape"],
                                     [{"kind": "gru", "window": 4}]], ids=["transformer", "attention", "shipped", "gru"])
def test_any_history_width_gives_the_query_of_its_latest_max_history_items(history, width):
    """Short serving histories are left-padded; longer ones are cut to the latest max_history items."""
    rng = np.random.default_rng(5)
    user = make_tower(history, features=())
    ids = rng.integers(0, NUM_ITEMS, size=(3, width)).astype(np.int32)
    latest = ids[:, -MAX_HISTORY:] if width else ids
    padded = np.concatenate([np.full((3, MAX_HISTORY - latest.shape[1]), -1, np.int32), latest], axis=1)

    def query(h):
        return user({"history": tf.constant(h), "age": tf.zeros([3]), "user_features": tf.zeros([3, 0], tf.int32)})

    np.testing.assert_allclose(query(ids).numpy(), query(padded).numpy(), atol=1e-6)
