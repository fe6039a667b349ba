"""Row-wise ("lazy") optimisers: a step's cost depends on the rows it touched, not on the catalogue.

Keras 3's Adam turns the `tf.IndexedSlices` gradient of an embedding table into a dense `[N, D]`
tensor and rewrites the whole table and both moment slots every step, so a step costs O(N·D) however
few items the batch touched (measured: 24 ms at 10k items, 284 ms at 1M). The optimisers here keep
dense updates for dense gradients (MLP weights) and, for `tf.IndexedSlices` gradients (the item table
and bias through the sampled loss, the history table through the user tower's gather):

1. aggregate duplicate indices (`tf.unique` + `tf.math.unsorted_segment_sum`), so each touched row
   gets the sum of its gradients, exactly as the dense gradient has it — skipped when the ids are
   distinct by construction (the gradient of a gather of `tf.unique`'s output, as an untied history
   table's lookup produces: `aggregate_rows`);
2. gather that row's slots, compute the update, scatter slots and variable back — O(rows·D).

What grows with the catalogue is step 2's random row accesses into [N, D] arrays (var, m, v) that no
longer fit in cache. Two layouts meant to cut them were measured and not adopted (scratch A/B,
interleaved repetitions, one thread, a loaded 2-core machine; the DeepMatch step of the scaling
benchmark, at 1M items 12.5k distinct history rows + 939 item rows per step):
m and v packed into one slot ([N, 2, D], one gather and one scatter for both moments) and touched
rows sorted before gather/scatter (memory locality). Packing saves a gather but costs an unpack and
a pack copy of the rows — the whole training step was within ±1 % of separate slots at 10k and 1M
items; sorting costs an argsort (TF sorts with a top-k) that the locality does not repay: +4 % on
the update at 1M items, +24 % at 10k.

`LazyAdam` is TF-Addons' / PyTorch `SparseAdam`'s LazyAdam: the moments of a row decay only on steps
that touch the row, with the usual bias correction from the global step. When every row has a
gradient every step it is exactly Keras' Adam (same ε-hat formulation); otherwise it differs from
dense Adam on purpose — dense Adam keeps moving an untouched row with its decaying momentum, lazy
Adam leaves it alone. `train.optimizer: lazy_adam` chooses it (quality: see benchmarks/RESULTS.md).

The tables must be *read* row-wise too: after a sparse update TF keeps a variable in copy-on-read
mode, where every whole-variable read copies it. The towers therefore look rows up from the backing
`tf.Variable` (`recall/model/towers.py`); tests/test_optim.py checks the traced step for it.

`LazyAdagrad` is exact, not an approximation: with a zero gradient Adagrad's accumulator and the row
do not change, so updating touched rows only is Keras' Adagrad (same initial accumulator and ε).

Both are `tf.Module`s: `tf.train.Checkpoint(optimizer=...)` saves their slots and step, so a resumed
run continues with the same moments. API as the loop uses it: `build(variables)` (creates the slots,
outside any tf.function), `apply_gradients(grads_and_vars)`, `learning_rate` (settable), `iterations`.
Variables may be Keras 3 variables or `tf.Variable`s.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


def backing_variable(var) -> tf.Variable:
    """The `tf.Variable` that holds `var`'s value: itself, or a Keras 3 variable's backing variable."""
    if isinstance(var, tf.Variable):
        return var
    inner = getattr(var, "_value", None)  # keras.Variable (TF backend); `.value` may autocast
    if isinstance(inner, tf.Variable):
        return inner
    value = getattr(var, "value", None)
    if isinstance(value, tf.Variable):
        return value
    raise TypeError(f"not a variable: {type(var).__name__}")


_UNIQUE_OPS = ("Unique", "UniqueWithCounts")  # 1-D ops: their output 0 holds each value once
_SAME_ELEMENTS_OPS = ("Reshape", "Identity")  # a reshape keeps the elements: distinct stays distinct


def distinct_by_construction(indices) -> bool:
    """True if `indices` is (a reshape of) the distinct values `tf.unique` returned, in a traced graph.

    That is the gradient of a gather of `tf.unique(ids)[0]` — the history table's gradient when the
    table is not tied and the batch is one part (`train.batch_splits: 1`): the user tower looks each
    distinct history item up once for the mean and every recency window (`_history_lookup` in
    recall/model/towers.py). A tied table's gradient (history rows + the sampled loss's rows) and
    split batches' (one `tf.unique` per part) are concats with repeated ids: False, de-duplicated as
    usual. Eager tensors have no producing op: False.
    """
    try:
        t = indices
        while t.op.type in _SAME_ELEMENTS_OPS:
            t = t.op.inputs[0]
        return t.op.type in _UNIQUE_OPS and t.value_index == 0
    except AttributeError:  # an EagerTensor: `.op` is not available
        return False


def aggregate_rows(grad: tf.IndexedSlices) -> tuple[tf.Tensor, tf.Tensor]:
    """(distinct row ids [R], summed gradient rows [R, ...]) of an IndexedSlices with repeated ids.

    Ids that are distinct by construction (`distinct_by_construction`) are the rows as they are, in
    their order: no `tf.unique`, a hash of every id (the history table's ~5k ids per step at 10k
    items, ~12.5k at 1M in the DeepMatch shape; the whole step ~3 % faster at both sizes, scratch
    in-process A/B with interleaved calls). Otherwise, gradients that hold each row once skip
    the segment sum: `tf.unique` keeps first-occurrence order, so then rows == indices. Same rows,
    same sums either way: the update is the same bit for bit.
    """
    if distinct_by_construction(grad.indices):
        return grad.indices, grad.values
    rows, slot = tf.unique(grad.indices)
    values = tf.cond(tf.size(rows) < tf.size(grad.indices),
                     lambda: tf.math.unsorted_segment_sum(grad.values, slot, tf.shape(rows)[0]),
                     lambda: grad.values)
    return rows, values


def _sub_rows(var: tf.Variable, rows: tf.Tensor, delta: tf.Tensor) -> None:
    """var[rows] -= delta for distinct `rows`. Gather + scatter_update: TF's CPU ScatterSub evaluates
    one Eigen expression per row, several times slower than ScatterUpdate's row copies (same result)."""
    var.scatter_update(tf.IndexedSlices(tf.gather(var, rows) - delta, rows))


class _RowwiseOptimizer(tf.Module):
    """Shared machinery: slots per variable, the global step, dense vs row-wise dispatch."""

    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate, name: str):
        super().__init__(name=name)
        # A float, or a schedule of the step (e.g. a Keras LearningRateSchedule): called with
        # `iterations` each step, so a restored step counter resumes the schedule where it was.
        self._schedule = self._no_dependency(learning_rate if callable(learning_rate) else None)
        initial = 0.0 if self._schedule is not None else float(learning_rate)
        # Not part of the checkpoint (as with a config value): a resumed run uses the configured rate.
        self._lr = self._no_dependency(tf.Variable(initial, trainable=False, dtype=tf.float32,
                                                   name="learning_rate"))
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.slots: dict[str, list[tf.Variable]] = {}  # slot name → one variable per model variable
        # backing variable ref → position in the slot lists (not a checkpoint dependency: keys are refs)
        self._index = self._no_dependency({})
        self.built = False

    @property
    def learning_rate(self):
        """The rate of the next step: the variable, or the schedule's value at `iterations`."""
        return self._current_lr()

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        if self._schedule is not None:
            raise ValueError("this optimizer follows a learning-rate schedule; its rate cannot be set")
        self._lr.assign(float(value))

    def _current_lr(self) -> tf.Tensor:
        if self._schedule is None:
            return tf.identity(self._lr)
        return tf.cast(self._schedule(self.iterations), tf.float32)

    def _slot_initial(self, var: tf.Variable, slot: str) -> float:
        return 0.0

    def _slot_placement(self, var: tf.Variable):
        """Context the slots of `var` are created in (none here; benchmarks/ps_trial.py puts them on
        their variable's parameter server)."""
        return contextlib.nullcontext()

    def build(self, variables) -> None:
        """Create the slots of `variables` (call once, eagerly, before the first step and before a
        checkpoint restore so the restore has somewhere to write)."""
        if self.built:
            return
        with tf.init_scope():
            slots = {name: [] for name in self.slot_names}
            for i, v in enumerate(variables):
                var = backing_variable(v)
                self._index[var.ref()] = i
                base = var.name.split(":")[0].replace("/", "_")
                with self._slot_placement(var):
                    for name in self.slot_names:
                        slots[name].append(tf.Variable(
                            tf.fill(var.shape, tf.cast(self._slot_initial(var, name), var.dtype)),
                            trainable=False, name=f"{base}_{name}"))
            self.slots = slots  # tracked (a dict attribute of a tf.Module): the checkpoint holds them
        self.built = True

    def apply_gradients(self, grads_and_vars) -> tf.Variable:
        """One update; `None` gradients are skipped. Returns the step counter after the update."""
        pairs = [(g, backing_variable(v)) for g, v in grads_and_vars]
        if not self.built:
            self.build([v for _, v in pairs])
        hyper = self._prepare_step()
        for grad, var in pairs:
            if grad is None:
                continue
            i = self._index.get(var.ref())
            if i is None:
                raise ValueError(f"{var.name}: not built into this optimizer; call build() with every variable")
            slots = {name: self.slots[name][i] for name in self.slot_names}
            if isinstance(grad, tf.IndexedSlices):
                rows, values = aggregate_rows(grad)
                self._sparse_update(var, slots, rows, tf.cast(values, var.dtype), hyper)
            else:
                self._dense_update(var, slots, tf.cast(tf.convert_to_tensor(grad), var.dtype), hyper)
        return self.iterations.assign_add(1)

    def _prepare_step(self) -> dict:
        """This step's scalars (learning rate, bias correction), computed once for all variables."""
        return {"lr": self._current_lr()}

    def _dense_update(self, var, slots, grad, hyper) -> None:
        raise NotImplementedError

    def _sparse_update(self, var, slots, rows, grad_rows, hyper) -> None:
        raise NotImplementedError


class LazyAdam(_RowwiseOptimizer):
    """Adam with row-wise updates for IndexedSlices gradients (Keras' formulation and defaults):

        t = iterations + 1;  α = lr · sqrt(1 − β2^t) / (1 − β1^t)
        m ← m + (g − m)(1 − β1);  v ← v + (g² − v)(1 − β2);  x ← x − α · m / (sqrt(v) + ε)

    dense gradients: every element; IndexedSlices: only the distinct touched rows (g summed per row),
    the other rows and their m, v unchanged.
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, name: str = "lazy_adam"):
        super().__init__(learning_rate, name)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _prepare_step(self) -> dict:
        t = tf.cast(self.iterations + 1, tf.float32)
        return {"alpha": self._current_lr() * tf.sqrt(1.0 - tf.pow(self.beta_2, t)) / (1.0 - tf.pow(self.beta_1, t))}

    def _dense_update(self, var, slots, grad, hyper) -> None:
        m, v = slots["m"], slots["v"]
        m.assign_add((grad - m) * (1.0 - self.beta_1))
        v.assign_add((tf.square(grad) - v) * (1.0 - self.beta_2))
        var.assign_sub(tf.cast(hyper["alpha"], var.dtype) * m / (tf.sqrt(v) + self.epsilon))

    def _sparse_update(self, var, slots, rows, grad_rows, hyper) -> None:
        m, v = slots["m"], slots["v"]
        m_rows = tf.gather(m, rows)
        v_rows = tf.gather(v, rows)
        m_rows = m_rows + (grad_rows - m_rows) * (1.0 - self.beta_1)
        v_rows = v_rows + (tf.square(grad_rows) - v_rows) * (1.0 - self.beta_2)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        _sub_rows(var, rows, tf.cast(hyper["alpha"], var.dtype) * m_rows / (tf.sqrt(v_rows) + self.epsilon))


class LazyAdagrad(_RowwiseOptimizer):
    """Adagrad (Keras' formulation and defaults), row-wise for IndexedSlices — exactly Keras' Adagrad:

        a ← a + g²;  x ← x − lr · g / sqrt(a + ε)      (a starts at `initial_accumulator_value`)
    """

    slot_names = ("accumulator",)

    def __init__(self, learning_rate: float = 1e-3, initial_accumulator_value: float = 0.1,
                 epsilon: float = 1e-7, name: str = "lazy_adagrad"):
        super().__init__(learning_rate, name)
        self.initial_accumulator_value, self.epsilon = float(initial_accumulator_value), float(epsilon)

    def _slot_initial(self, var, slot: str) -> float:
        return self.initial_accumulator_value

    def _dense_update(self, var, slots, grad, hyper) -> None:
        acc = slots["accumulator"]
        acc.assign_add(tf.square(grad))
        var.assign_sub(tf.cast(hyper["lr"], var.dtype) * grad / tf.sqrt(acc + self.epsilon))

    def _sparse_update(self, var, slots, rows, grad_rows, hyper) -> None:
        acc = slots["accumulator"]
        acc_rows = tf.gather(acc, rows) + tf.square(grad_rows)
        acc.scatter_update(tf.IndexedSlices(acc_rows, rows))
        _sub_rows(var, rows, tf.cast(hyper["lr"], var.dtype) * grad_rows / tf.sqrt(acc_rows + self.epsilon))
