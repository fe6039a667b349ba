"""Row-wise optimisers (recall/training/optim.py) against numpy references, checkpoints and a tiny run.

- every row has a gradient every step → LazyAdam is dense Adam (numpy, and Keras' own Adam);
- IndexedSlices touching some rows (with duplicate ids) → the touched rows follow the numpy lazy
  reference, untouched rows and their moments do not change by a single bit;
- checkpoints hold the slots and the step, and a restored optimiser continues identically;
- `train.optimizer: lazy_adam` trains, resumes and continues the optimiser's step;
- the towers hand the optimiser `tf.IndexedSlices` for every embedding table (else it goes dense),
  and the compiled step reads and writes the tables and their slots only row by row.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pre_recipe import PRE_RECIPE

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from recall.training.optim import LazyAdagrad, LazyAdam, backing_variable  # noqa: E402

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-7


def np_adam(x, m, v, g, t, lazy_rows=None):
    """One Adam step in float32, Keras' formulation and operation order (TF computes in float32 too:
    in float64, 1 − β2^t alone differs by 3e-5 relative, as β2 is not exact in float32).
    With `lazy_rows`, only those rows change."""
    f = np.float32
    alpha = f(LR) * np.sqrt(f(1) - f(B2) ** f(t)) / (f(1) - f(B1) ** f(t))
    rows = slice(None) if lazy_rows is None else lazy_rows
    m, v, x, g = m.astype(f), v.astype(f), x.astype(f), g.astype(f)
    m[rows] = m[rows] + (g[rows] - m[rows]) * f(1 - B1)
    v[rows] = v[rows] + (np.square(g[rows]) - v[rows]) * f(1 - B2)
    x[rows] = x[rows] - alpha * m[rows] / (np.sqrt(v[rows]) + f(EPS))
    return x, m, v


def dense_of(indices, values, n):
    """The dense gradient of (indices, values): duplicate ids add up (in float32, as TF sums them)."""
    g = np.zeros((n, *values.shape[1:]), np.float32)
    np.add.at(g, indices, values.astype(np.float32))
    return g


def _slots(opt, i=0):
    return opt.slots["m"][i].numpy(), opt.slots["v"][i].numpy()


@pytest.mark.parametrize("keras_var", [False, True])
def test_all_rows_every_step_is_dense_adam(keras_var):
    rng = np.random.default_rng(0)
    n, d = 12, 4
    init = rng.normal(size=(n, d)).astype(np.float32)
    var = keras.Variable(init) if keras_var else tf.Variable(init)
    table = keras.Variable(init)  # the same start, updated by sparse gradients covering every row
    reference = tf.Variable(init)  # Keras' Adam on the dense gradient
    opt, opt_sparse = LazyAdam(LR), LazyAdam(LR)
    keras_adam = keras.optimizers.Adam(learning_rate=LR)
    opt.build([var])
    opt_sparse.build([table])
    keras_adam.build([reference])
    x, m, v = init.copy(), np.zeros((n, d), np.float32), np.zeros((n, d), np.float32)

    @tf.function
    def steps(g, idx, vals):
        opt.apply_gradients([(g, var)])
        opt_sparse.apply_gradients([(tf.IndexedSlices(vals, idx, tf.constant([n, d])), table)])
        keras_adam.apply_gradients([(g, reference)])

    for t in range(1, 6):
        # Every row at least once, some twice (a duplicate id within one batch), shuffled.
        idx = rng.permutation(np.concatenate([np.arange(n), rng.integers(0, n, 5)]))
        vals = rng.normal(size=(len(idx), d)).astype(np.float32)
        g = dense_of(idx, vals, n)
        steps(tf.constant(g, tf.float32), tf.constant(idx), tf.constant(vals))
        x, m, v = np_adam(x, m, v, g, t)
    for tested in (var, table):
        np.testing.assert_allclose(backing_variable(tested).numpy(), x, rtol=1e-6)
    np.testing.assert_allclose(_slots(opt)[0], m, rtol=1e-6)
    np.testing.assert_allclose(_slots(opt)[1], v, rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), reference.numpy(), rtol=1e-6)
    np.testing.assert_allclose(table.numpy(), reference.numpy(), rtol=1e-6)
    assert int(opt.iterations) == int(opt_sparse.iterations) == 5


def test_sparse_rows_follow_the_lazy_reference_and_others_do_not_move():
    rng = np.random.default_rng(1)
    n, d = 50, 3
    init = rng.normal(size=(n, d)).astype(np.float32)
    table, bias = keras.Variable(init), tf.Variable(init[:, 0].copy())
    opt = LazyAdam(LR)
    opt.build([table, bias])
    x, m, v = init.copy(), np.zeros((n, d), np.float32), np.zeros((n, d), np.float32)
    xb, mb, vb = init[:, 0].copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)

    @tf.function
    def step(idx, vals, bias_vals):
        opt.apply_gradients([(tf.IndexedSlices(vals, idx, tf.constant([n, d])), table),
                             (tf.IndexedSlices(bias_vals, idx, tf.constant([n])), bias)])

    never = np.arange(40, 50)  # rows no step touches
    for t in range(1, 8):
        idx = rng.integers(0, 40, 9)
        idx[-1] = idx[0]  # a duplicate id in the batch: its two gradients add up
        vals = rng.normal(size=(len(idx), d)).astype(np.float32)
        before = {"x": table.numpy(), "m": _slots(opt, 0)[0], "v": _slots(opt, 0)[1]}
        step(tf.constant(idx, tf.int64), tf.constant(vals), tf.constant(vals[:, 0]))
        rows = np.unique(idx)
        x, m, v = np_adam(x, m, v, dense_of(idx, vals, n), t, lazy_rows=rows)
        xb, mb, vb = np_adam(xb, mb, vb, dense_of(idx, vals[:, 0], n), t, lazy_rows=rows)
        after = {"x": table.numpy(), "m": _slots(opt, 0)[0], "v": _slots(opt, 0)[1]}
        untouched = np.setdiff1d(np.arange(n), rows)
        for name in ("x", "m", "v"):  # bit for bit: untouched rows and their moments stay put
            assert np.array_equal(after[name][untouched], before[name][untouched]), name
        np.testing.assert_allclose(after["x"][rows], x[rows], rtol=1e-6)
        np.testing.assert_allclose(after["m"][rows], m[rows], rtol=1e-6)
        np.testing.assert_allclose(after["v"][rows], v[rows], rtol=1e-6)
        np.testing.assert_allclose(bias.numpy()[rows], xb[rows], rtol=1e-6)
    # The whole state matches the lazy reference (untouched rows: never moved from their start).
    np.testing.assert_allclose(table.numpy(), x, rtol=1e-6)
    assert np.array_equal(table.numpy()[never], init[never])
    assert not _slots(opt, 0)[0][never].any() and not _slots(opt, 1)[1][never].any()


def test_lazy_adam_differs_from_dense_adam_only_by_design():
    """Dense Adam keeps moving a row with stale momentum after its gradient stops; lazy Adam does not."""
    var_lazy, var_dense = tf.Variable([[1.0], [1.0]]), tf.Variable([[1.0], [1.0]])
    lazy, dense = LazyAdam(LR), keras.optimizers.Adam(learning_rate=LR)
    lazy.build([var_lazy])
    dense.build([var_dense])
    for idx in ([0, 1], [0]):  # row 1 has a gradient in step 1 only
        g = tf.IndexedSlices(tf.ones([len(idx), 1]), tf.constant(idx), tf.constant([2, 1]))
        lazy.apply_gradients([(g, var_lazy)])
        dense.apply_gradients([(tf.convert_to_tensor(g), var_dense)])
    np.testing.assert_allclose(var_lazy.numpy()[0], var_dense.numpy()[0], rtol=1e-6)
    assert var_lazy.numpy()[1, 0] > var_dense.numpy()[1, 0]  # dense moved row 1 again in step 2


def test_lazy_adagrad_equals_keras_adagrad_on_sparse_gradients():
    rng = np.random.default_rng(2)
    n, d = 20, 3
    init = rng.normal(size=(n, d)).astype(np.float32)
    ours, theirs = tf.Variable(init), tf.Variable(init)
    opt, ref = LazyAdagrad(0.1), keras.optimizers.Adagrad(learning_rate=0.1)
    opt.build([ours])
    ref.build([theirs])
    for _ in range(5):
        idx = rng.integers(0, 10, 8)
        g = tf.IndexedSlices(tf.constant(rng.normal(size=(8, d)).astype(np.float32)), tf.constant(idx),
                             tf.constant([n, d]))
        opt.apply_gradients([(g, ours)])
        ref.apply_gradients([(tf.convert_to_tensor(g), theirs)])
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)
    assert np.array_equal(ours.numpy()[10:], init[10:])


def test_checkpoint_round_trips_slots_and_step(tmp_path):
    rng = np.random.default_rng(3)
    n, d = 8, 2

    def model_and_optimizer():
        table, dense = keras.Variable(np.zeros((n, d), np.float32)), tf.Variable(np.zeros(d, np.float32))
        opt = LazyAdam(LR)
        opt.build([table, dense])
        return table, dense, opt

    def grads():
        idx = rng.integers(0, n, 4)
        return [(tf.IndexedSlices(tf.constant(rng.normal(size=(4, d)).astype(np.float32)), tf.constant(idx),
                                  tf.constant([n, d])), None),
                (tf.constant(rng.normal(size=d).astype(np.float32)), None)]

    table, dense, opt = model_and_optimizer()
    for _ in range(3):
        (g1, _), (g2, _) = grads()
        opt.apply_gradients([(g1, table), (g2, dense)])
    path = tf.train.Checkpoint(table=table, dense=dense, optimizer=opt).save(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any("optimizer/iterations" in s for s in names)
    assert sum("optimizer/slots/m/" in s for s in names) == 2 and sum("optimizer/slots/v/" in s for s in names) == 2

    table2, dense2, opt2 = model_and_optimizer()
    tf.train.Checkpoint(table=table2, dense=dense2, optimizer=opt2).restore(path).assert_consumed()
    assert int(opt2.iterations) == 3
    for name in ("m", "v"):
        for a, b in zip(opt.slots[name], opt2.slots[name]):
            assert np.array_equal(a.numpy(), b.numpy()) and a.numpy().any()
    (g1, _), (g2, _) = grads()  # the next step is the same step for both
    opt.apply_gradients([(g1, table), (g2, dense)])
    opt2.apply_gradients([(g1, table2), (g2, dense2)])
    assert np.array_equal(table.numpy(), table2.numpy()) and np.array_equal(dense.numpy(), dense2.numpy())
    assert np.array_equal(opt.slots["v"][0].numpy(), opt2.slots["v"][0].numpy())


def test_learning_rate_is_settable_and_unknown_variables_are_refused():
    var, other = tf.Variable([1.0]), tf.Variable([1.0])
    opt = LazyAdam(0.5)
    opt.build([var])
    opt.learning_rate = 0.25
    assert float(opt.learning_rate) == 0.25
    with pytest.raises(ValueError, match="not built"):
        opt.apply_gradients([(tf.constant([1.0]), other)])


def test_towers_give_row_gradients_for_every_table():
    """The optimiser can only be row-wise if the tables' gradients are IndexedSlices (not dense)."""
    from recall.config import Config
    from recall.pipeline import build_model
    from recall.training.samplers import make_sampler
    from recall.training.step import make_loss_fn, trainable_variables
    from recall.training.task import RetrievalTask

    cfg = Config.model_validate({"model": {"dim": 8, "hidden": [8], "max_history": 6, "tie_embeddings": False,
                                           "history": [{"kind": "mean"}, {"kind": "recent", "window": 2}]}})
    user, items = build_model(cfg, 100, [])
    variables = trainable_variables(user, items)
    loss_fn = make_loss_fn(user, RetrievalTask(items, "sampled_softmax", make_sampler("log_uniform", 10, 100, seed=0)))
    features = {"history": tf.constant([[-1, -1, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]], tf.int32),
                "age": tf.zeros([2]), "user_features": tf.zeros([2, 0], tf.int32)}
    with tf.GradientTape() as tape:
        loss = loss_fn(features, tf.constant([9, 10], tf.int64))
    grads = dict(zip([v.path for v in variables], tape.gradient(loss, variables)))
    # Exactly the history table, the item table and the item bias get row gradients; the MLP's are dense.
    row_wise = sorted(path for path, grad in grads.items() if isinstance(grad, tf.IndexedSlices))
    assert row_wise == ["items/bias", "items/embeddings", "user/history_embeddings"], row_wise
    assert all(isinstance(grads[path], tf.Tensor) for path in grads if path not in row_wise)


def test_ids_distinct_by_construction_skip_unique_and_give_the_same_update():
    """aggregate_rows takes `tf.unique`'s output (through reshapes) as the rows without hashing them
    again; anything else (unique's idx output, a concat, eager ids) goes through tf.unique."""
    from recall.training.optim import distinct_by_construction

    ids = tf.constant([5, 3, 5, 9, 3, 0], tf.int64)
    seen = {}

    @tf.function
    def probe(ids):
        distinct, idx = tf.unique(ids)
        seen["unique"] = distinct_by_construction(distinct)
        seen["reshaped"] = distinct_by_construction(tf.reshape(tf.identity(distinct), [-1]))
        seen["idx"] = distinct_by_construction(idx)
        seen["concat"] = distinct_by_construction(tf.concat([distinct, distinct], 0))
        seen["ids"] = distinct_by_construction(ids)
        return distinct

    probe(ids)
    assert seen == {"unique": True, "reshaped": True, "idx": False, "concat": False, "ids": False}
    assert not distinct_by_construction(tf.constant([1, 2]))  # eager: no producing op

    # The same LazyAdam step with the shortcut (gather of tf.unique's rows) and without (the same ids
    # as a plain tensor): bit for bit equal tables and moments, and a traced graph without a Unique
    # op in the optimiser's part when the shortcut applies.
    rng = np.random.default_rng(4)
    n, d = 30, 4
    init = rng.normal(size=(n, d)).astype(np.float32)
    tables = [tf.Variable(init), tf.Variable(init)]
    opts = [LazyAdam(LR), LazyAdam(LR)]
    for opt, table in zip(opts, tables):
        opt.build([table])

    def step(opt, table, history, weights, shortcut):
        with tf.GradientTape() as tape:
            distinct, slot = tf.unique(history)
            rows = distinct if shortcut else tf.identity(tf.gather(history, tf.math.unsorted_segment_min(
                tf.range(tf.size(history)), slot, tf.size(distinct))))  # the same ids, not from unique
            loss = tf.reduce_sum(tf.gather(tf.gather(table, rows), slot) * weights)
        (grad,) = tape.gradient(loss, [table])
        assert isinstance(grad, tf.IndexedSlices)
        assert distinct_by_construction(grad.indices) == shortcut
        opt.apply_gradients([(grad, table)])

    fns = [tf.function(lambda h, w, i=i: step(opts[i], tables[i], h, w, shortcut=(i == 0))) for i in range(2)]
    for _ in range(4):
        history = tf.constant(rng.integers(0, 20, 12), tf.int64)
        weights = tf.constant(rng.normal(size=(12, d)).astype(np.float32))
        for fn in fns:
            fn(history, weights)
    assert np.array_equal(tables[0].numpy(), tables[1].numpy())
    assert not np.array_equal(tables[0].numpy(), init)
    for a, b in zip(_slots(opts[0]), _slots(opts[1])):
        assert np.array_equal(a, b)
    graph = fns[0].get_concrete_function(history, weights).graph
    assert sum(op.type == "Unique" for op in graph.get_operations()) == 1  # the model's own, only


def _shortcut_per_table(model: dict, splits: int = 1) -> dict:
    """{table path: whether its traced gradient takes aggregate_rows' shortcut} for a sampled-softmax
    step of towers built from `model` (config keys) over 100 items, the batch in `splits` parts."""
    from recall.config import Config
    from recall.pipeline import build_model
    from recall.training.optim import distinct_by_construction
    from recall.training.samplers import make_sampler
    from recall.training.step import make_loss_fn, trainable_variables
    from recall.training.task import RetrievalTask

    cfg = Config.model_validate({"model": {"dim": 8, "hidden": [8], "max_history": 6, "tie_embeddings": False,
                                           "dropout": 0.0, "compute_dtype": "float32", **model}})
    user, items = build_model(cfg, 100, [])
    variables = trainable_variables(user, items)
    loss_fn = make_loss_fn(user, RetrievalTask(items, "sampled_softmax", make_sampler("log_uniform", 10, 100, seed=0)),
                           splits=splits)
    features = {"history": tf.constant([[-1, -1, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]], tf.int32),
                "age": tf.zeros([2]), "user_features": tf.zeros([2, 0], tf.int32)}
    found = {}

    @tf.function
    def grads(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(features, labels)
        for v, g in zip(variables, tape.gradient(loss, variables)):
            if isinstance(g, tf.IndexedSlices):
                found[v.path] = distinct_by_construction(g.indices)
        return loss

    grads.get_concrete_function(features, tf.constant([3, 10], tf.int64))
    return found


@pytest.mark.parametrize("recency", [
    {"history": [{"kind": "mean"}]}, {"history": [{"kind": "mean"}, {"kind": "recent", "window": 2}]},
    {"history": [{"kind": "mean"}, {"kind": "min_gru", "window": 4}]},
    {"history": [{"kind": "mean"}, {"kind": "gru", "window": 3}]}], ids=["mean-only", "recent", "min_gru", "gru"])
def test_history_gradient_is_distinct_by_construction(recency):
    """The history mean and every per-position window read the same distinct rows: the history
    table's gradient takes aggregate_rows' shortcut whatever the recency parts; the item table's
    (labels + negatives, repeated ids) does not."""
    found = _shortcut_per_table(recency)
    assert found == {"user/history_embeddings": True, "items/embeddings": False, "items/bias": False}


@pytest.mark.parametrize("case", ["tied", "split"])
def test_repeated_ids_never_take_the_shortcut(case):
    """A tied table's gradient (history rows + the sampled loss's rows) and a split batch's history
    gradient (one tf.unique per part) are concats with repeated ids: aggregate_rows must de-duplicate."""
    found = _shortcut_per_table({"history": [{"kind": "mean"}, {"kind": "recent", "window": 2}],
                                 "tie_embeddings": case == "tied"}, splits=2 if case == "split" else 1)
    assert found and not any(found.values()), found


@pytest.mark.parametrize("batching", ["positions", "sequences"])
def test_compiled_training_block_touches_tables_only_row_wise(batching):
    """No whole-table op on a table or its slots in the block training runs (`make_train_block`, as the
    loop builds it: tied tables, a GRU, a split batch, lazy Adam): a dense read would be a copy of the
    whole table every step (TF's copy-on-read after sparse access) — a cost that grows with N."""
    from recall.config import Config
    from recall.data.examples import make_examples
    from recall.data.sequences import make_chunks
    from recall.data.split import leave_last_out
    from recall.data.synthetic import synthesize
    from recall.pipeline import build_model
    from recall.training.inputs import ExampleBatcher, SequenceBatcher
    from recall.training.samplers import make_sampler
    from recall.training.schedule import make_optimizer
    from recall.training.step import make_loss_fn, make_train_block, trainable_variables
    from recall.training.task import RetrievalTask

    split = leave_last_out(synthesize(num_users=30, num_items=100, interactions_per_user=12, num_topics=3, seed=1))
    cfg = Config.model_validate({"model": {"dim": 8, "hidden": [8], "max_history": 6, "tie_embeddings": True,
                                           "history": [{"kind": "mean"}, {"kind": "gru", "window": 3}]}})
    user, items = build_model(cfg, split.num_items, [])
    examples = make_examples(split, 6)
    codes = np.zeros((split.num_users, 0), np.int32)
    if batching == "sequences":
        chunks = make_chunks(examples, 4)
        batcher = SequenceBatcher(split.train_items, split.train_indptr, examples, chunks, codes, user.context, 4)
    else:
        batcher = ExampleBatcher(split.train_items, examples, codes, 6)
    variables = trainable_variables(user, items)
    opt = make_optimizer("lazy_adam", 0.01)
    opt.build(variables)
    task = RetrievalTask(items, "sampled_softmax", make_sampler("log_uniform", 10, split.num_items, seed=0,
                                                                 stateless=True))
    block = make_train_block(batcher, make_loss_fn(user, task, batching, splits=2), variables, opt, seed=0)
    idx = tf.constant(np.arange(8, dtype=np.int64).reshape(2, 4))  # 2 steps of 4 rows / chunks
    graph = block.get_concrete_function(idx, tf.constant(0, tf.int64)).graph
    watched = {}
    for i, v in enumerate(variables):
        if v.path in ("items/embeddings", "items/bias"):
            for name, tensor in [("table", backing_variable(v))] + [(s, opt.slots[s][i]) for s in ("m", "v")]:
                watched[id(tensor.handle)] = f"{v.path}:{name}"
    assert len(watched) == 6  # the tied table (history rows too), its bias, their two slots each
    seen = {}
    for external, internal in graph.captures:
        if id(external) in watched:
            seen[watched[id(external)]] = {c.type for c in internal.consumers()}
    assert set(seen) == set(watched.values())
    for name, ops in seen.items():
        assert ops <= {"ResourceGather", "ResourceScatterUpdate"}, (name, ops)
    losses = block(idx, tf.constant(0, tf.int64)).numpy()  # and it runs
    assert losses.shape == (2,) and np.isfinite(losses).all()


@pytest.mark.slow
def test_lazy_adam_trains_and_resumes(tmp_path):
    import recall
    from recall.data.synthetic import synthesize

    log = tmp_path / "log.parquet"
    synthesize(num_users=200, num_items=60, interactions_per_user=15, num_topics=4, seed=5).to_parquet(log)
    overrides = ["data.source=file", f"data.path={log}", "model.dim=16", "model.hidden=[32]",
                 "model.history=[{kind: mean}]", *PRE_RECIPE,
                 "model.max_history=10", "loss.num_sampled=20", "train.batch_size=64", "train.learning_rate=0.01",
                 "train.optimizer=lazy_adam", "train.early_stopping=null", "eval.ks=[10,20]",
                 "train.steps_per_execution=2"]
    run_dir = tmp_path / "run"
    first = recall.train(recall.load_config(None, [*overrides, "train.epochs=1"]), run_dir)
    per_epoch = first["train"]["steps"]
    metrics = recall.train(recall.load_config(None, [*overrides, "train.epochs=3"]), run_dir)  # resumes
    assert metrics["train"]["steps"] == 3 * per_epoch
    ckpt = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    reader = tf.train.load_checkpoint(ckpt)
    assert reader.get_tensor("optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3 * per_epoch  # continued
    history = json.loads((run_dir / "history.json").read_text())
    losses = [e["loss"] for e in history["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    test = metrics["test"]["filtered"]
    assert test["hr@20"] > metrics["most_popular"]["test"]["filtered"]["hr@20"]


@pytest.mark.parametrize("name", ["adam", "adagrad"])
def test_keras_optimizers_sum_repeated_rows_before_squaring(name):
    """`train.optimizer: adam|adagrad` (Keras' optimizers, training/schedule.py) on an IndexedSlices
    gradient with repeated rows take the dense gradient's step: the numpy reference of Adam / Adagrad
    with the rows summed first. Keras alone squares each slice (v gets Σgᵢ² instead of (Σgᵢ)²)."""
    from recall.training.schedule import make_optimizer

    rng = np.random.default_rng(3)
    n, d = 6, 3
    x0 = rng.normal(size=(n, d)).astype(np.float32)
    indices = np.array([1, 4, 1, 1, 0], np.int64)  # row 1 three times, rows 2, 3, 5 untouched
    values = rng.normal(size=(5, d)).astype(np.float32)
    var = tf.Variable(x0)
    opt = make_optimizer(name, LR)
    opt.build([var])

    @tf.function
    def step():
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([n, d], tf.int64)), var)])

    step()
    step()
    g = dense_of(indices, values, n)
    if name == "adam":
        x, m, v = x0, np.zeros_like(x0), np.zeros_like(x0)
        for t in (1, 2):
            x, m, v = np_adam(x, m, v, g, t)
    else:  # Keras' Adagrad: accumulator starts at 0.1, x -= lr·g / sqrt(acc + ε)… with ε outside the root
        acc, x = np.full_like(x0, 0.1), x0.copy()
        for _ in (1, 2):
            acc = acc + np.square(g)
            x = x - np.float32(LR) * g / (np.sqrt(acc) + np.float32(EPS))
    np.testing.assert_allclose(var.numpy(), x, rtol=1e-5, atol=1e-6)
