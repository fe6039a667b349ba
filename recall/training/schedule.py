"""The optimizer and its learning-rate schedule (the training loop builds them from train.*)."""

from __future__ import annotations

from recall.errors import RecallError


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", total_steps: int = 0,
                           warmup_steps: int = 0):
    """`learning_rate` itself (constant), or a Keras schedule of the optimizer's step (cosine):

        lr(t) = learning_rate · t / W                                   for t < W (warmup)
        lr(t) = learning_rate · ½ (1 + cos(π · min(t − W, T − W) / (T − W)))   after, 0 from t = T on

    with T = `total_steps` (epochs × batches per epoch), W = `warmup_steps`.
    """
    if schedule == "constant":
        return learning_rate
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    if warmup_steps >= total_steps:
        raise RecallError(f"train.warmup_steps ({warmup_steps}) must be below the planned steps ({total_steps} "
                          "= epochs × batches per epoch); lower it or train more epochs")
    import keras

    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps, alpha=0.0)
    # Keras' warmup rises from initial_learning_rate to warmup_target, then decays over decay_steps.
    return keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup_steps, alpha=0.0,
                                                  warmup_target=learning_rate, warmup_steps=warmup_steps)


def shifted_schedule(schedule, offset):
    """The schedule at (step − `offset`), `offset` an int64 tf.Variable.

    A warm-started run carries the parent optimizer's step counter (Adam's bias correction assumes
    moments of that age) but plans its own schedule from its own step 0; the offset is checkpointed
    with the run, so a resumed warm run keeps it.
    """
    import keras
    import tensorflow as tf

    class Shifted(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return schedule(tf.cast(step, tf.int64) - offset)

        def get_config(self):
            return {"schedule": keras.optimizers.schedules.serialize(schedule)}

    return Shifted()


def make_optimizer(name: str, learning_rate: float, schedule: str = "constant", total_steps: int = 0,
                   warmup_steps: int = 0, step_offset=None):
    """Keras' adam/adagrad/sgd, or a row-wise optimiser for embedding tables (recall/training/optim.py).

    `schedule`/`total_steps`/`warmup_steps`: see `learning_rate_schedule`; the schedule reads the
    optimizer's own step counter, which the training checkpoint holds, minus `step_offset` (an int64
    tf.Variable, for a warm start: `shifted_schedule`) when given.
    """
    lr = learning_rate_schedule(learning_rate, schedule, total_steps, warmup_steps)
    if step_offset is not None and callable(lr):
        lr = shifted_schedule(lr, step_offset)
    if name in ("lazy_adam", "lazy_adagrad"):
        from recall.training.optim import LazyAdagrad, LazyAdam

        return {"lazy_adam": LazyAdam, "lazy_adagrad": LazyAdagrad}[name](learning_rate=lr)
    import keras

    if name == "sgd":  # linear in the gradient: repeated rows are summed by its scatter as they should be
        return keras.optimizers.SGD(learning_rate=lr)
    return _rows_summed_first({"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad}[name])(
        learning_rate=lr)


def _rows_summed_first(keras_optimizer):
    """`keras_optimizer` whose update first sums the repeated rows of a `tf.IndexedSlices` gradient.

    Keras 3's Adam and Adagrad square an IndexedSlices gradient slice by slice (`ops.square` keeps
    the slices) and only then densify it, which adds the squares of a row's repeated slices: v gets
    Σ gᵢ² where the dense gradient gives (Σ gᵢ)². A tied item table's gradient repeats rows every step
    (history rows + the loss's label and candidate rows), and under a tf.distribute strategy the
    all-gathered slices of every replica repeat them too. Summing first makes the update the dense
    gradient's, on one process and on several (tests/test_optim.py). It runs inside `update_step`,
    after the strategy has gathered the replicas' slices.
    """
    import tensorflow as tf

    from recall.training.optim import aggregate_rows

    class RowsSummedFirst(keras_optimizer):
        def update_step(self, gradient, variable, learning_rate):
            if isinstance(gradient, tf.IndexedSlices):
                rows, values = aggregate_rows(gradient)
                gradient = tf.IndexedSlices(values, rows, gradient.dense_shape)
            return super().update_step(gradient, variable, learning_rate)

    RowsSummedFirst.__name__ = keras_optimizer.__name__
    return RowsSummedFirst
