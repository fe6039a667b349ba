"""Candidate samplers, the sampled/full softmax losses and the two towers, against numpy references."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from recall.model import ItemTower, UserTower  # noqa: E402
from recall.training.loss import full_softmax, sampled_softmax  # noqa: E402
from recall.training.samplers import SAMPLERS, make_sampler  # noqa: E402
from recall.training.step import trainable_variables  # noqa: E402

TF_SAMPLERS = ("log_uniform", "uniform", "unigram", "learned_unigram")  # TF's candidate samplers
N = 20  # classes
S = 50  # candidates per batch
COUNTS = np.array([60, 40, 30, 25, 20, 16, 14, 12, 10, 9, 8, 7, 6, 5, 4, 3, 3, 2, 1, 1])  # non-increasing


def _q_reference(kind: str) -> np.ndarray:
    """The sampler's distribution Q [N], written independently of TensorFlow."""
    ids = np.arange(N, dtype=np.float64)
    if kind == "log_uniform":
        return np.log((ids + 2) / (ids + 1)) / np.log(N + 1)
    if kind == "uniform":
        return np.full(N, 1.0 / N)
    if kind == "unigram":
        w = COUNTS.astype(np.float64) ** 0.75
        return w / w.sum()
    raise ValueError(kind)


def _sampler(kind, unique=False, logq_correction=True, num_sampled=S, stateless=False):
    return make_sampler(kind, num_sampled, N, unique=unique, item_counts=COUNTS, distortion=0.75,
                        logq_correction=logq_correction, seed=7, stateless=stateless)


def _seed(step: int) -> tf.Tensor:
    """The loop's per-step seed [config seed, global step] (TF's stateful samplers ignore it)."""
    return tf.constant([7, step], tf.int64)


STATELESS = pytest.mark.parametrize("stateless", [False, True], ids=["tf", "stateless"])


LABELS = tf.constant([[0], [3], [19]], tf.int64)  # [B=3, 1]


# --- samplers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TF_SAMPLERS)
@pytest.mark.parametrize("unique", [False, True])
def test_sampler_shapes_and_dtypes(kind, unique):
    sampled, true_expected, sampled_expected = _sampler(kind, unique=unique, num_sampled=8)(LABELS)
    assert sampled.shape == (8,) and sampled.dtype == tf.int64
    assert true_expected.shape == (3, 1) and true_expected.dtype == tf.float32
    assert sampled_expected.shape == (8,) and sampled_expected.dtype == tf.float32
    s = sampled.numpy()
    assert ((s >= 0) & (s < N)).all()
    if unique:
        assert len(set(s.tolist())) == 8
    assert (true_expected.numpy() > 0).all() and (sampled_expected.numpy() > 0).all()


@STATELESS
@pytest.mark.parametrize("kind", ["log_uniform", "uniform", "unigram"])
def test_expected_counts_are_num_sampled_times_q(kind, stateless):
    """With unique=False every draw is independent: expected count = S · Q(id), exactly."""
    q = _q_reference(kind)
    sampled, true_expected, sampled_expected = _sampler(kind, stateless=stateless)(LABELS, _seed(0))
    np.testing.assert_allclose(sampled_expected.numpy(), S * q[sampled.numpy()], rtol=1e-5)
    np.testing.assert_allclose(true_expected.numpy()[:, 0], S * q[LABELS.numpy()[:, 0]], rtol=1e-5)


@STATELESS
@pytest.mark.parametrize("kind", ["log_uniform", "uniform", "unigram"])
def test_empirical_frequency_matches_expected_count(kind, stateless):
    """Over 2,000 batches × 50 draws (100,000 draws) each id's frequency is within 0.006 of
    expected_count / S. The largest Q here is 0.23, whose binomial std is sqrt(.23·.77/1e5) ≈ 0.0013,
    so the tolerance is > 4.5σ for every id."""
    sampler = _sampler(kind, stateless=stateless)
    batches = 2000
    counts = np.zeros(N)
    expected = np.zeros(N)
    for step in range(batches):
        sampled, _, sampled_expected = sampler(LABELS, _seed(step))
        s = sampled.numpy()
        np.add.at(counts, s, 1)
        expected[s] = sampled_expected.numpy()  # the same value every time id s is drawn
    freq = counts / (batches * S)
    assert (counts > 0).all(), "every id should be drawn at least once in 100,000 draws"
    np.testing.assert_allclose(freq, expected / S, atol=0.006)
    np.testing.assert_allclose(freq, _q_reference(kind), atol=0.006)


@pytest.mark.parametrize("kind", ["log_uniform", "uniform", "unigram"])
@pytest.mark.parametrize("unique", [False, True])
def test_stateless_draws_are_a_function_of_the_seed(kind, unique):
    """train.deterministic: the same (seed, step) gives the same triple — in a fresh sampler too, as
    after a restart — and other steps give other candidates."""
    first = [t.numpy() for t in _sampler(kind, unique, num_sampled=8, stateless=True)(LABELS, _seed(5))]
    again = [t.numpy() for t in _sampler(kind, unique, num_sampled=8, stateless=True)(LABELS, _seed(5))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    sampler = _sampler(kind, unique, num_sampled=8, stateless=True)
    others = {tuple(sampler(LABELS, _seed(step))[0].numpy().tolist()) for step in range(6, 16)}
    assert len(others) > 1  # ten steps, not one candidate set repeated
    if unique:
        assert len(set(first[0].tolist())) == 8


def test_stateless_refusals():
    with pytest.raises(ValueError, match="learned_unigram"):
        _sampler("learned_unigram", stateless=True)
    with pytest.raises(ValueError, match="seed"):
        _sampler("uniform", stateless=True)(LABELS)
    with pytest.raises(ValueError, match="impossible"):
        _sampler("uniform", unique=True, num_sampled=N + 1, stateless=True)


@pytest.mark.parametrize("kind", TF_SAMPLERS)
def test_no_logq_correction_gives_unit_expected_counts(kind):
    sampled, true_expected, sampled_expected = _sampler(kind, logq_correction=False)(LABELS)
    np.testing.assert_array_equal(true_expected.numpy(), np.ones((3, 1), np.float32))
    np.testing.assert_array_equal(sampled_expected.numpy(), np.ones(S, np.float32))
    assert sampled.shape == (S,)


def test_unknown_sampler_and_bad_counts_raise():
    assert set(TF_SAMPLERS) <= set(SAMPLERS)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("zipf", 5, N)
    with pytest.raises(ValueError, match="item_counts"):
        make_sampler("unigram", 5, N, item_counts=COUNTS[:5])


# --- losses -----------------------------------------------------------------------------------


def _fixed_sampler(candidates, true_expected, sampled_expected):
    """A sampler stub: always the same candidates and expected counts."""

    def sampler(labels):
        return (tf.constant(candidates, tf.int64), tf.constant(true_expected, tf.float32),
                tf.constant(sampled_expected, tf.float32))

    return sampler


def _np_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _np_sampled_softmax(w, b, labels, q, candidates, true_expected, sampled_expected, remove_hits):
    """logits = q·w + b − log(expected count); true class in column 0; accidental hits → −1e30."""
    true_logit = (q * w[labels]).sum(1) + b[labels] - np.log(true_expected[:, 0])  # [B]
    sampled_logits = q @ w[candidates].T + b[candidates] - np.log(sampled_expected)[None, :]  # [B, S]
    if remove_hits:
        sampled_logits = np.where(labels[:, None] == candidates[None, :], -1e30, sampled_logits)
    logits = np.concatenate([true_logit[:, None], sampled_logits], axis=1)
    return float(-_np_log_softmax(logits)[:, 0].mean())


def test_sampled_softmax_hand_computed():
    # N=3 items with 1-d vectors w = [1, 2, 0], no bias, expected counts 1 (no log Q):
    # row 0: q=1, label 0, candidates [1, 2] → logits [1 | 2, 0] → loss = log(e + e² + 1) − 1
    # row 1: q=0, label 1, candidates [1, 2] → logits [0 | hit, 0] → loss = log(1 + 1) = log 2
    w = tf.constant([[1.0], [2.0], [0.0]])
    b = tf.zeros([3])
    sampler = _fixed_sampler([1, 2], [[1.0], [1.0]], [1.0, 1.0])
    loss = sampled_softmax(w, b, tf.constant([0, 1]), tf.constant([[1.0], [0.0]]), sampler)
    expected = (np.log(np.e + np.e**2 + 1) - 1 + np.log(2)) / 2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


@pytest.mark.parametrize("remove_hits", [True, False])
def test_sampled_softmax_matches_numpy(remove_hits):
    rng = np.random.default_rng(0)
    n, d, batch = 12, 4, 5
    w = rng.normal(size=(n, d)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    q = rng.normal(size=(batch, d)).astype(np.float32)
    labels = np.array([0, 3, 7, 3, 11])
    candidates = np.array([3, 5, 8, 0, 10, 1])  # 3 and 0 are accidental hits for rows 0, 1, 3
    true_expected = rng.uniform(0.2, 2.0, size=(batch, 1)).astype(np.float32)
    sampled_expected = rng.uniform(0.2, 2.0, size=len(candidates)).astype(np.float32)
    sampler = _fixed_sampler(candidates, true_expected, sampled_expected)
    loss = sampled_softmax(tf.constant(w), tf.constant(b), tf.constant(labels), tf.constant(q), sampler,
                           remove_accidental_hits=remove_hits)
    expected = _np_sampled_softmax(w, b, labels, q, candidates, true_expected, sampled_expected, remove_hits)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_full_softmax_matches_numpy():
    rng = np.random.default_rng(1)
    n, d, batch = 9, 3, 4
    w = rng.normal(size=(n, d)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    q = rng.normal(size=(batch, d)).astype(np.float32)
    labels = np.array([0, 8, 4, 4])
    loss = full_softmax(tf.constant(w), tf.constant(b), tf.constant(labels), tf.constant(q))
    expected = -_np_log_softmax(q @ w.T + b)[np.arange(batch), labels].mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


# --- towers -----------------------------------------------------------------------------------


def _inputs(history, age=None):
    history = tf.constant(history, tf.int32)
    b = history.shape[0]
    return {"history": history, "age": tf.constant(age if age is not None else [0.0] * b, tf.float32),
            "user_features": tf.zeros([b, 0], tf.int32)}


TOWER_ARGS = dict(num_items=10, dim=4, hidden=[8], history=[{"kind": "mean"}, {"kind": "recent", "window": 2}],
                  example_age=True)


def test_user_tower_ignores_padding_columns():
    """A 5-wide history with 2 padding columns gives the output of a 3-wide tower with the same weights."""
    wide = UserTower(max_history=5, **TOWER_ARGS)
    narrow = UserTower(max_history=3, **TOWER_ARGS)
    out_wide = wide(_inputs([[-1, -1, 3, 4, 5], [-1, -1, -1, -1, 2]], age=[0.3, 0.0]))
    narrow(_inputs([[3, 4, 5]]))
    narrow.set_weights(wide.get_weights())
    out_narrow = narrow(_inputs([[3, 4, 5], [-1, -1, 2]], age=[0.3, 0.0]))
    np.testing.assert_allclose(out_wide.numpy(), out_narrow.numpy(), rtol=1e-5, atol=1e-6)
    # Any negative id is padding, and an all-padding history is finite (no division by zero).
    other_pad = wide(_inputs([[-7, -2, 3, 4, 5], [-1, -1, -1, -1, -1]], age=[0.3, 0.0]))
    np.testing.assert_allclose(other_pad.numpy()[0], out_wide.numpy()[0], rtol=1e-6)
    assert np.isfinite(other_pad.numpy()).all()


def test_tied_embeddings_share_the_item_table():
    items = ItemTower(10, 4, name="items")
    user = UserTower(max_history=3, shared_items=items, **TOWER_ARGS)
    x = _inputs([[1, 2, 3]])
    before = user(x).numpy()
    assert not hasattr(user, "history_embeddings")
    tables = [v for v in trainable_variables(user, items) if v.shape == (10, 4)]
    assert len(tables) == 1 and tables[0] is items.embeddings
    items.embeddings.assign(items.embeddings * 3.0)  # the user tower reads the same variable
    assert not np.allclose(user(x).numpy(), before)

    untied = UserTower(max_history=3, **TOWER_ARGS)
    untied(x)
    assert untied.history_embeddings is not items.embeddings
    assert len([v for v in trainable_variables(untied, items) if v.shape == (10, 4)]) == 2


@pytest.mark.parametrize("normalize", [False, True])
def test_temperature_divides_the_output(normalize):
    x = _inputs([[-1, 1, 2], [0, 5, 9]], age=[0.5, 0.1])
    base = UserTower(max_history=3, normalize=normalize, temperature=1.0, **TOWER_ARGS)
    hot = UserTower(max_history=3, normalize=normalize, temperature=0.25, **TOWER_ARGS)
    base(x)
    hot(x)
    hot.set_weights(base.get_weights())
    np.testing.assert_allclose(hot(x).numpy(), base(x).numpy() / 0.25, rtol=1e-5)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(base(x).numpy(), axis=1), 1.0, rtol=1e-5)


def test_tower_get_config_round_trips():
    args = dict(num_items=11, dim=6, hidden=[16, 8], max_history=7, feature_sizes=[3, 5], feature_dim=4,
                history=[{"kind": "mean"}, {"kind": "recent", "window": 2}, {"kind": "last_items", "window": 2},
                         {"kind": "attention"}, {"kind": "gru", "window": 2}],
                example_age=False, dropout=0.1, normalize=True,
                temperature=0.5)
    tower = UserTower(name="user", **args)
    config = tower.get_config()
    for key, value in args.items():
        assert config[key] == value, key
    clone = UserTower.from_config(config)
    assert clone.get_config() == config
    out = clone({"history": tf.constant([[1, 2, -1, -1, -1, -1, 3]]), "age": tf.zeros([1]),
                 "user_features": tf.constant([[1, 0]])})
    assert out.shape == (1, 6)

    items = ItemTower(11, 6, use_bias=False, normalize=True, bias_init=-2.0, name="items")
    item_config = items.get_config()
    assert {k: item_config[k] for k in ("num_items", "dim", "use_bias", "normalize", "bias_init")} == \
        {"num_items": 11, "dim": 6, "use_bias": False, "normalize": True, "bias_init": -2.0}
    assert ItemTower.from_config(item_config).get_config() == item_config


def test_checkpoint_holds_every_tower_weight(tmp_path):
    """Restoring `tf.train.Checkpoint(user=, items=)` into fresh towers reproduces the outputs; sublayers
    kept in Python lists (MLP, feature embeddings) must be in the checkpoint too."""

    def towers():
        items = ItemTower(10, 4, name="items")
        user = UserTower(10, 4, [8, 6], 3, feature_sizes=[2, 3], history=[{"kind": "mean"}, {"kind": "recent", "window": 1}],
                         name="user")
        return user, items

    x = {"history": tf.constant([[1, 2, 3]]), "age": tf.zeros([1]), "user_features": tf.constant([[1, 3]])}
    user, items = towers()
    user(x)
    items.bias.assign(tf.range(10, dtype=tf.float32))
    path = tf.train.Checkpoint(user=user, items=items).save(str(tmp_path / "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path)]
    for layer in ("hidden_0", "hidden_1", "feature_0", "feature_1", "out"):
        assert any(f"user/{layer}/" in n for n in names), (layer, names)
    # every weight, plus the save counter and the object graph
    assert len(names) == len({id(v) for v in user.weights + items.weights}) + 2

    fresh_user, fresh_items = towers()
    fresh_user(x)
    tf.train.Checkpoint(user=fresh_user, items=fresh_items).restore(path).assert_consumed()
    np.testing.assert_array_equal(fresh_user(x).numpy(), user(x).numpy())
    np.testing.assert_array_equal(fresh_items.bias.numpy(), items.bias.numpy())


def test_item_bias_init():
    """`bias_init` sets every item's starting bias; without a bias it stays zeros (the index ignores it)."""
    np.testing.assert_array_equal(ItemTower(5, 3).bias.numpy(), np.zeros(5, np.float32))
    items = ItemTower(5, 3, bias_init=-1.5)
    np.testing.assert_array_equal(items.bias.numpy(), np.full(5, -1.5, np.float32))
    assert items.bias.trainable
    np.testing.assert_array_equal(items.weights_and_biases()[1].numpy(), np.full(5, -1.5, np.float32))
    np.testing.assert_array_equal(ItemTower(5, 3, use_bias=False, bias_init=-1.5).bias.numpy(), np.zeros(5))


@pytest.mark.parametrize("kind,item_bias,expected", [
    ("sampled_softmax", True, 0.0), ("full_softmax", True, 0.0), ("nce", True, -np.log(40)),
    ("neg", True, -np.log(40)), ("nce", False, 0.0),
])
def test_build_model_starts_nce_self_normalised(kind, item_bias, expected):
    """NCE/NEG start every item bias at −log N (Z ≈ 1 at the start); the softmax losses at 0."""
    from recall.config import Config
    from recall.pipeline import build_model

    cfg = Config.model_validate({"model": {"dim": 4, "hidden": [8], "max_history": 3, "item_bias": item_bias},
                                 "loss": {"kind": kind}})
    _, items = build_model(cfg, 40, [])
    np.testing.assert_allclose(items.bias.numpy(), np.full(40, expected), rtol=1e-6)
    assert items.get_config()["bias_init"] == pytest.approx(expected)
