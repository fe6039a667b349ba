"""The user tower's history pooling: the sparse segment mean equals the gather-and-mask reference."""

import keras
import numpy as np
import tensorflow as tf

from recall.model import UserTower
from recall.model.encoders import PositionView


def _reference_mean(table, history):
    """numpy: mean of table rows over the non-negative ids of each row (zeros when none)."""
    out = np.zeros((len(history), table.shape[1]), np.float32)
    for r, row in enumerate(history):
        ids = row[row >= 0]
        if len(ids):
            out[r] = table[ids].mean(axis=0)
    return out


def _window(tower, history, width):
    """The tower's per-position embeddings [B, width, D] and mask of the last `width` columns."""
    _, rows, slots = tower._history_lookup(tf.constant(history))
    return PositionView(None, rows, slots).window(width)


def test_history_mean_and_its_gradient_match_the_reference():
    rng = np.random.default_rng(0)
    n, m = 30, 6
    tower = UserTower(n, 4, [8], m, example_age=False, name="user")
    history = np.full((5, m), -1, np.int32)
    history[0, 2:] = [3, 3, 7, 1]  # a duplicate id counts twice in the mean
    history[1, :] = rng.integers(0, n, m)
    history[3, -1:] = [29]  # rows 2 and 4 stay empty → zeros
    weights = tf.constant(rng.normal(size=(5, 4)), tf.float32)
    table = tower.history_embeddings
    with tf.GradientTape() as tape:
        pooled = tower._history_lookup(tf.constant(history))[0]
        loss = tf.reduce_sum(pooled * weights)
    grad = tf.convert_to_tensor(tape.gradient(loss, table))
    np.testing.assert_allclose(pooled.numpy(), _reference_mean(table.numpy(), history), rtol=1e-6, atol=1e-7)

    # The gather-and-mask form it replaces, differentiated by TF.
    ref_table = tf.Variable(table.numpy())
    mask = tf.cast(history >= 0, tf.float32)[..., None]
    with tf.GradientTape() as tape:
        emb = tf.gather(ref_table, np.maximum(history, 0)) * mask
        ref_loss = tf.reduce_sum(tf.reduce_sum(emb, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0) * weights)
    ref_grad = tf.convert_to_tensor(tape.gradient(ref_loss, ref_table))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-5, atol=1e-7)


def test_window_from_shared_rows_matches_gather_and_mask_with_its_gradient():
    # Mean and window read the same distinct rows; values and the table's gradient must equal the
    # direct per-position gather (TF-differentiated) with a repeated id inside the window.
    rng = np.random.default_rng(1)
    tower = UserTower(30, 4, [8], 6, example_age=False, name="user")
    history = np.array([[-1, -1, 3, 3, 7, 1], [2, 9, 4, 3, 1, 1], [-1, -1, -1, -1, -1, -1]], np.int32)
    w_mean, w_win = (tf.constant(rng.normal(size=shape), tf.float32) for shape in [(3, 4), (3, 4, 4)])
    table = tower.history_embeddings
    with tf.GradientTape() as tape:
        mean, rows, slots = tower._history_lookup(tf.constant(history))
        emb, mask = PositionView(None, rows, slots).window(4)
        loss = tf.reduce_sum(mean * w_mean) + tf.reduce_sum(emb * w_win)
    grad = tape.gradient(loss, table)
    assert len(np.unique(grad.indices.numpy())) == len(grad.indices)  # one gradient row per distinct item

    ref_table = tf.Variable(table.numpy())
    with tf.GradientTape() as tape:
        full_mask = tf.cast(history >= 0, tf.float32)[..., None]
        full = tf.gather(ref_table, np.maximum(history, 0)) * full_mask
        ref_mean = tf.reduce_sum(full, 1) / tf.maximum(tf.reduce_sum(full_mask, 1), 1.0)
        ref_loss = tf.reduce_sum(ref_mean * w_mean) + tf.reduce_sum(full[:, -4:] * w_win)
    np.testing.assert_allclose(emb.numpy(), full[:, -4:].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(mask.numpy()[..., 0], (history[:, -4:] >= 0).astype(np.float32))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(grad).numpy(),
                               tf.convert_to_tensor(tape.gradient(ref_loss, ref_table)).numpy(), rtol=1e-5, atol=1e-6)


def test_recent_window_uses_the_latest_columns():
    tower = UserTower(20, 4, [8], 5, history=[{"kind": "mean"}, {"kind": "recent", "window": 2},
                                              {"kind": "last_items", "window": 3}], example_age=False, name="user")
    a = np.array([[-1, 4, 5, 6, 7]], np.int32)
    b = np.array([[9, 4, 5, 6, 7]], np.int32)  # differs only in the oldest column, outside both windows

    def feats(h):
        return {"history": tf.constant(h), "age": tf.zeros([1]), "user_features": tf.zeros([1, 0], tf.int32)}

    # Outputs differ (the all-history mean sees column 0) but the recency parts must not: compare them.
    emb_a, _ = _window(tower, a, 3)
    emb_b, _ = _window(tower, b, 3)
    np.testing.assert_array_equal(emb_a.numpy(), emb_b.numpy())
    assert not np.allclose(tower(feats(a)).numpy(), tower(feats(b)).numpy())
    without_mean = UserTower(20, 4, [8], 5, history=[{"kind": "recent", "window": 2}], example_age=False, name="u2")
    np.testing.assert_allclose(without_mean(feats(a)).numpy(), without_mean(feats(b)).numpy(), rtol=1e-6)


def test_gru_window_ignores_left_padding():
    tower = UserTower(20, 4, [8], 6, history=[{"kind": "gru", "window": 4}], example_age=False, name="user")
    short = np.array([[-1, -1, -1, -1, 5, 7]], np.int32)
    feats = {"history": tf.constant(short), "age": tf.zeros([1]), "user_features": tf.zeros([1, 0], tf.int32)}
    assert tower(feats).shape == (1, 4)
    gru = tower.encoders[0].gru
    emb, mask = _window(tower, short, 4)
    masked = gru(emb, mask=mask[..., 0] > 0).numpy()
    only_items = gru(emb[:, -2:]).numpy()  # the same two items with no padding at all
    np.testing.assert_allclose(masked, only_items, rtol=1e-5, atol=1e-6)


# --- the self-attention encoder ({kind: transformer}) -------------------------------------------------


def _feats(history):
    h = tf.constant(np.asarray(history, np.int32))
    return {"history": h, "age": tf.zeros([h.shape[0]]), "user_features": tf.zeros([h.shape[0], 0], tf.int32)}


def _transformer_tower(seed=0, tied=False, dropout=0.2):
    from recall.model import ItemTower

    keras.utils.set_random_seed(seed)
    items = ItemTower(20, 8, name="items") if tied else None
    history = [{"kind": "transformer", "band": 3, "blocks": 2, "heads": 2, "dropout": dropout}]
    tower = UserTower(20, 8, [16], 6, history=history, example_age=False, shared_items=items, name="user")
    tower(_feats([[-1] * 6]))
    return tower, items


def test_transformer_output_shape_and_config():
    tower, _ = _transformer_tower()
    encoder = tower.encoders[0]
    assert encoder.reads == 5  # 2 blocks · (band 3 − 1) + 1
    out = tower(_feats([[-1, -1, 3, 5, 7, 9], [1, 2, 3, 4, 5, 6], [-1] * 6]), training=True)
    assert out.shape == (3, 8)
    assert np.isfinite(out.numpy()).all()  # an empty history (all PAD) too
    assert encoder.encoder(tf.zeros([3, 4, 8]), tf.ones([3, 4, 1])).shape == (3, 4, 8)
    assert tower.get_config()["history"] == [{"kind": "transformer", "band": 3, "blocks": 2, "heads": 2,
                                              "dropout": 0.2}]
    config = encoder.encoder.get_config()
    assert (config["blocks"], config["heads"], config["band"]) == (2, 2, 3)
    clone = type(encoder.encoder).from_config(config)
    assert clone.get_config() == config


def test_transformer_ignores_left_padding():
    tower, _ = _transformer_tower()
    np.testing.assert_allclose(tower(_feats([[-1, -1, -1, 3, 5, 7]])).numpy(),
                               tower(_feats([[-1, -5, -1, 3, 5, 7]])).numpy(), rtol=1e-6)


def test_transformer_sees_order_and_distance():
    tower, _ = _transformer_tower()
    encoder = tower.encoders[0].encoder
    encoder.block_0.relative_bias.assign([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])  # distances now matter too

    def encoded(history):
        return encoder(*_window(tower, history, len(history[0])))[:, -1].numpy()

    assert np.abs(encoded([[3, 5, 7]]) - encoded([[7, 5, 3]])).max() > 1e-3
    # Outside the receptive field (5 items) nothing matters: the oldest of 6 columns is ignored.
    np.testing.assert_allclose(encoded([[1, 3, 5, 7, 9, 11]]), encoded([[2, 3, 5, 7, 9, 11]]), rtol=1e-6)


def test_transformer_checkpoint_round_trip(tmp_path):
    tower, items = _transformer_tower(seed=0, tied=True, dropout=0.1)
    feats = _feats([[-1, 2, 3, 5, 7, 11], [4, 4, 1, 0, 19, 2]])
    expected = tower(feats).numpy()
    path = tf.train.Checkpoint(user=tower, items=items).save(str(tmp_path / "ckpt"))

    other, other_items = _transformer_tower(seed=1, tied=True, dropout=0.1)
    assert not np.allclose(other(feats).numpy(), expected)
    status = tf.train.Checkpoint(user=other, items=other_items).restore(path)
    status.assert_consumed()  # every saved value found a home …
    status.assert_existing_objects_matched()  # … and every variable of the new tower was restored
    np.testing.assert_allclose(other(feats).numpy(), expected, rtol=1e-6, atol=1e-7)
    # Every encoder weight is in the checkpoint (not only reachable through a list).
    names = [name for name, _ in tf.train.list_variables(path)]
    for block in ("block_0", "block_1"):
        assert any(f"encoder/{block}/qkv" in n for n in names), names
        assert any(f"encoder/{block}/relative_bias" in n for n in names), names


def test_transformer_with_tied_embeddings_reads_the_output_table():
    tower, items = _transformer_tower(tied=True)
    assert not hasattr(tower, "history_embeddings")
    before = tower(_feats([[-1, -1, -1, 3, 5, 7]])).numpy()
    items.embeddings.assign(items.embeddings * 2.0)
    assert not np.allclose(tower(_feats([[-1, -1, -1, 3, 5, 7]])).numpy(), before)


def test_bfloat16_tower_restores_a_float32_checkpoint_and_returns_float32(tmp_path):
    # compute_dtype changes how the matmuls run, not the weights: the same variables (float32, same
    # paths) and a float32 query vector close to the float32 tower's.
    rng = np.random.default_rng(4)
    inputs = {"history": tf.constant(rng.integers(-1, 40, (16, 12)), tf.int32), "age": tf.zeros([16]),
              "user_features": tf.zeros([16, 0], tf.int32)}
    history = [{"kind": "mean"}, {"kind": "recent", "window": 3}, {"kind": "gru", "window": 5}]
    full = UserTower(40, 16, [32], 12, history=history, dropout=0.2, name="user")
    half = UserTower(40, 16, [32], 12, history=history, dropout=0.2, compute_dtype="bfloat16", name="user")
    full(inputs), half(inputs)
    path = tf.train.Checkpoint(user=full).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(user=half).restore(path).assert_existing_objects_matched()
    assert [w.dtype for w in half.weights] == ["float32"] * len(half.weights)
    assert [layer.compute_dtype for layer in half.mlp] == ["bfloat16"] * len(half.mlp)
    assert half.out.compute_dtype == "float32"  # the query vector keeps float32 precision
    a, b = full(inputs).numpy(), half(inputs)
    assert b.dtype == tf.float32
    np.testing.assert_allclose(b.numpy(), a, rtol=0, atol=0.02 * np.abs(a).max())
    assert not np.array_equal(b.numpy(), a)


def test_native_bfloat16_reads_the_cpu_flags(tmp_path):
    from recall.pipeline import native_bfloat16

    cpu = tmp_path / "cpuinfo"
    cpu.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert native_bfloat16(str(cpu)) is True
    cpu.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n")
    assert native_bfloat16(str(cpu)) is True
    cpu.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert native_bfloat16(str(cpu)) is False  # → build_model warns that bfloat16 is emulated
    assert native_bfloat16(str(tmp_path / "missing")) is None  # not Linux: no warning


def test_auto_compute_dtype_follows_the_cpu(caplog, monkeypatch):
    from recall import pipeline
    from recall.pipeline import resolve_compute_dtype

    assert resolve_compute_dtype("auto", native=True) == "bfloat16"
    assert resolve_compute_dtype("auto", native=False) == "float32"
    monkeypatch.setattr(pipeline, "native_bfloat16", lambda: None)  # cannot tell (no /proc/cpuinfo)
    assert resolve_compute_dtype("auto") == "float32"  # the safe choice
    assert resolve_compute_dtype("float32", native=True) == "float32"
    with caplog.at_level("WARNING"):
        assert resolve_compute_dtype("bfloat16", native=False) == "bfloat16"  # the user asked: kept
    assert "emulated" in caplog.text and "model.compute_dtype" in caplog.text
