"""Warm start: a new run on new data that begins from an earlier (parent) run's state, row by row.

The new run's vocabulary is rebuilt from its own data, frequency-sorted (data/split.py), so a
surviving item usually sits on another row than in the parent. Everything row-shaped moves with its
id; the rest is copied:

    parent row ─(raw id)─► new row         rows of ids the parent did not know: as in a fresh run
    item table [N, D], bias [N], untied history table [N, D]     → by the item map
    user-feature tables [V_f + 1, d]  (row 0 = unknown → row 0)  → by the feature value map
    their optimizer slots (Adam m, v; Adagrad accumulator; LazyAdam/LazyAdagrad alike) → same maps
    dense weights (encoders, MLP, output layer) and their slots   → copied as they are
    the optimizer's step counter                                  → copied (Adam's bias correction
                                                                     assumes moments of that age)
    streaming frequency estimate (gap, mult, last [N], step)      → by the item map; new items as in
                                                                     a fresh run: gap N/B, seen "now"
Ids the new data lacks are dropped. learned_unigram's counts live inside TensorFlow's sampler op
(not in any variable), so they cannot be carried: that sampler starts counting afresh.

The weights are the parent's best (checkpoints/best: what it evaluated and exported); the optimizer
slots, step counter and frequency estimate come from its last checkpoint (the best one holds only
weights) — the same step unless the parent trained on past its best epoch.

How: the parent's model and optimizer are rebuilt from its config.yaml and vocabulary with its table
sizes, its checkpoints are restored into them through TensorFlow's object graph (no dependence on
checkpoint key names), and their arrays are moved into the new model's variables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from recall.config import Config, config_from_dict
from recall.data.vocabulary import Vocabulary, read_vocabulary
from recall.errors import RecallError

log = logging.getLogger(__name__)

# Fields of `model` a warm start may change (every other one must equal the parent's: it shapes or
# interprets a carried weight), and why.
MODEL_FREE = {
    "model.dropout": "regularisation only: no weight depends on it",
    "model.compute_dtype": "how the matmuls run; the weights are float32 either way",
    "model.max_history": "no weight depends on it (each encoder's window is checked against it)",
    "model.temperature": "no weight depends on it; it rescales every logit, so the first steps re-fit the scale",
}
_ESTIMATOR = ("step", "last", "gap", "mult")  # FrequencyEstimator variables, as named under sampler/estimator/


@dataclass
class Parent:
    """An earlier run, as a warm start reads it. vocab: its rows' raw ids and feature values."""

    run_dir: Path
    cfg: Config
    config_hash: str
    vocab: Vocabulary
    latest: str  # checkpoint prefix with optimizer slots and sampler state
    best: str  # checkpoint prefix with the best weights


def read_parent(run_dir: str | Path, pinned_hash: str | None = None, own_dir: Path | None = None) -> Parent:
    """Check that `run_dir` is a finished run a warm start can begin from; RecallError naming what is missing."""
    where = f"warm_start.run_dir ({run_dir})"
    run_dir = Path(run_dir)
    if own_dir is not None and run_dir.resolve() == Path(own_dir).resolve():
        raise RecallError(f"{where}: is this run's own directory; a warm start writes a new run — pass another "
                          "--run-dir")
    if not run_dir.is_dir():
        raise RecallError(f"{where}: no such directory; pass the run directory an earlier `recall train` wrote")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise RecallError(f"{where}: not a run directory (no config.yaml); pass the directory `recall train` wrote")
    try:
        cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
    except yaml.YAMLError:
        raise RecallError(f"{cfg_path}: not valid YAML; the parent run directory is damaged") from None
    if pinned_hash is not None and cfg.hash() != pinned_hash:
        raise RecallError(f"warm_start.parent_config_hash: {cfg_path} now has hash {cfg.hash()[:12]}…, not the "
                          f"pinned {pinned_hash[:12]}… (the parent was retrained or edited); unset it to accept the "
                          "parent as it is")
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    best = tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "best"))
    if latest is None or best is None:
        raise RecallError(f"{where}: has no trained weights (checkpoints/ and checkpoints/best/); finish training it "
                          "with `recall train` first")
    vocab = read_vocabulary(run_dir / "vocabulary") or read_vocabulary(run_dir / "export")
    if vocab is None:
        raise RecallError(f"{where}: no vocabulary (vocabulary/item_ids.npy, or export/item_ids.npy in runs made "
                          f"before warm starts); write one with `recall export {run_dir}`")
    return Parent(run_dir, cfg, cfg.hash(), vocab, latest, best)


def check_compatible(parent: Parent, cfg: Config, item_ids: np.ndarray, features) -> None:
    """The new config and data must fit the parent's weights: same model section (bar MODEL_FREE),
    same item id type, same user-feature columns and prefixes. One-line RecallError otherwise."""
    from recall.pipeline import _differences, _shown

    for path, was, now in _differences(parent.cfg.model.model_dump(mode="json"), cfg.model.model_dump(mode="json"),
                                       "model."):
        if path not in MODEL_FREE:
            raise RecallError(f"{path}: is {_shown(now)} here but {_shown(was)} in the warm-start parent "
                              f"{parent.run_dir}, whose weights depend on it; set it back, or train cold (no "
                              f"--warm-start). A warm start may change only {', '.join(MODEL_FREE)}")
    old_str, new_str = parent.vocab.string_ids, np.asarray(item_ids).dtype.kind in "USO"
    if old_str != new_str:
        kinds = ("strings", "integers")
        raise RecallError(f"{parent.run_dir}/vocabulary/item_ids.npy: the warm-start parent's item ids are "
                          f"{kinds[not old_str]}, this data's are {kinds[not new_str]}; check data.columns.item "
                          "(and the file's column types), or train cold")
    before = [(name, prefix) for name, prefix, _ in parent.vocab.features]
    after = [(name, features.prefix(i)) for i, name in enumerate(features.names)]
    if before != after:
        raise RecallError(f"data.user_features: the warm-start parent {parent.run_dir} used (column, prefix) "
                          f"{before}, this config {after}; a warm start needs the same columns and prefixes "
                          "(the MLP reads them), or train cold")


def row_map(old_keys: np.ndarray, new_keys: np.ndarray) -> np.ndarray:
    """int64 [len(new_keys)]: the row of each new key in `old_keys`, −1 for a key the parent did not have."""
    from recall.data.split import raw_to_internal

    old_keys, new_keys = np.asarray(old_keys), np.asarray(new_keys)
    if old_keys.dtype.kind in "USO" or new_keys.dtype.kind in "USO":
        old_keys, new_keys = old_keys.astype(str), new_keys.astype(str)
    return raw_to_internal(old_keys, new_keys)


def feature_row_map(old_values: np.ndarray, new_values: np.ndarray) -> np.ndarray:
    """int64 [V_new + 1] for a feature table (row c ≥ 1 = value c − 1, row 0 = unknown → row 0)."""
    inner = row_map(old_values, new_values)
    return np.r_[0, np.where(inner >= 0, inner + 1, -1)].astype(np.int64)


def move_rows(fresh: np.ndarray, old: np.ndarray, old_of_new: np.ndarray | None) -> np.ndarray:
    """fresh [N_new, ...] with row i replaced by old[old_of_new[i]] where old_of_new[i] ≥ 0; `old`
    itself when there is no map (a dense weight, which must have the fresh one's shape)."""
    if old_of_new is None:
        if old.shape != fresh.shape:
            raise ValueError(f"shape {old.shape} of the parent's weight does not fit {fresh.shape}")
        return old
    out = fresh.copy()
    kept = old_of_new >= 0
    out[kept] = old[old_of_new[kept]]
    return out


def model_variables(user, items) -> list:
    """Every variable of both towers once (tied tables once), without dropout seed-generator states."""
    seen, out = set(), []
    for v in [*user.variables, *items.variables]:
        if id(v) not in seen and "seed_generator" not in v.path:
            seen.add(id(v))
            out.append(v)
    return out


def table_maps(user, items, item_map: np.ndarray, feature_maps: list[np.ndarray]) -> dict[int, np.ndarray]:
    """id(variable) → its row map, for the row-shaped variables (the rest are dense)."""
    maps = {id(items.embeddings): item_map, id(items.bias): item_map}
    if user.shared_items is None:
        maps[id(user.history_embeddings)] = item_map
    for layer, fmap in zip(user.feature_embeddings, feature_maps, strict=True):
        maps[id(layer.embeddings)] = fmap
    return maps


def optimizer_slots(optimizer) -> dict[str, list]:
    """Slot name → one slot variable per trained variable, in the order the optimizer was built with.

    recall's row-wise optimisers keep them in `.slots`; Keras 3's in per-slot lists (`_momentums`,
    `_velocities`, `_accumulators`, …), found generically and checked to cover every variable the
    optimizer has besides its step and learning rate, so a slot this code does not know fails loudly.
    """
    import keras

    if isinstance(getattr(optimizer, "slots", None), dict):
        return dict(optimizer.slots)
    n = len(optimizer._trainable_variables)
    out = {name.lstrip("_"): list(value) for name, value in vars(optimizer).items()
           if name not in ("_variables", "_trainable_variables") and not name.startswith("_self")
           and isinstance(value, list) and n and len(value) == n and all(isinstance(x, keras.Variable) for x in value)}
    covered = {id(x) for slots in out.values() for x in slots}
    known = {id(optimizer.iterations), id(getattr(optimizer, "_learning_rate", None))}
    unknown = [v.path for v in optimizer.variables if id(v) not in covered | known]
    if unknown:
        raise RuntimeError(f"{type(optimizer).__name__}: variables {unknown} are not in a per-variable slot list")
    return out


@dataclass
class WarmStart:
    """What a warm start carries, read from the parent, ready to be moved into the new run's variables.

    weights    arrays of the parent's `model_variables` (best checkpoint), in order
    slots      slot name → arrays, one per parent trainable variable (None: another optimizer kind)
    iterations the parent optimizer's step counter
    estimator  FrequencyEstimator arrays by name (None when the parent had none)
    item_map   int64 [N_new] parent row of each new item (−1 = new); feature_maps likewise per feature
    """

    parent: Parent
    weights: list[np.ndarray]
    slots: dict[str, list[np.ndarray]] | None
    iterations: int
    estimator: dict[str, np.ndarray] | None
    item_map: np.ndarray
    feature_maps: list[np.ndarray]
    report: dict = field(default_factory=dict)

    def apply(self, user, items, variables: list, optimizer, sampler) -> dict:
        """Move everything into the new run's towers, optimizer (built over `variables`, the trained
        variables in order) and sampler. Returns the report recorded in lineage.json / metrics.json."""
        maps = table_maps(user, items, self.item_map, self.feature_maps)
        new_vars = model_variables(user, items)
        if len(new_vars) != len(self.weights):
            raise RecallError(f"{self.parent.run_dir}: its model has {len(self.weights)} variables, this one "
                              f"{len(new_vars)}; the model sections must match for a warm start")
        for var, old in zip(new_vars, self.weights, strict=True):
            var.assign(self._moved(var, old, maps.get(id(var))))
        carried_slots = self.slots is not None
        if carried_slots:
            new_slots = optimizer_slots(optimizer)
            if sorted(new_slots) != sorted(self.slots):
                raise RuntimeError(f"optimizer slots {sorted(new_slots)} vs the parent's {sorted(self.slots)}")
            for name, slot_vars in new_slots.items():
                for var, slot, old in zip(variables, slot_vars, self.slots[name], strict=True):
                    slot.assign(self._moved(var, old, maps.get(id(var)), fresh=slot.numpy()))
            optimizer.iterations.assign(self.iterations)
        carried_estimator = False
        estimator = getattr(sampler, "estimator", None)
        if estimator is not None and self.estimator is not None:
            step = self.estimator["step"]
            estimator.step.assign(step)
            estimator.gap.assign(move_rows(estimator.gap.numpy(), self.estimator["gap"], self.item_map))
            estimator.mult.assign(move_rows(estimator.mult.numpy(), self.estimator["mult"], self.item_map))
            # A new item counts as seen now, as every item does at a fresh run's step 0.
            estimator.last.assign(move_rows(np.full(len(self.item_map), step, np.int64), self.estimator["last"],
                                            self.item_map))
            carried_estimator = True
        return {**self.report, "optimizer_slots_carried": carried_slots,
                "optimizer_iterations": self.iterations if carried_slots else 0,
                "frequency_estimate_carried": carried_estimator}

    def _moved(self, var, old: np.ndarray, old_of_new, fresh: np.ndarray | None = None) -> np.ndarray:
        try:
            return move_rows(var.numpy() if fresh is None else fresh, old, old_of_new)
        except ValueError as err:
            raise RecallError(f"{self.parent.run_dir}: weight {var.path}: {err}; the model sections must match "
                              "for a warm start") from None


def prepare_warm_start(cfg: Config, data, parent: Parent) -> WarmStart:
    """Rebuild the parent's model and optimizer, restore its checkpoints into them, and keep their arrays.

    Call before building the new run's model: building a model re-seeds the random generators, so the
    new model's fresh rows are then exactly those of a cold run of `cfg`.
    """
    from recall.pipeline import build_model
    from recall.training.schedule import make_optimizer
    from recall.training.step import trainable_variables

    pc, vocab = parent.cfg, parent.vocab
    check_compatible(parent, cfg, data.split.item_ids, data.features)
    user, items = build_model(pc, len(vocab.item_ids), [len(values) for _, _, values in vocab.features])
    variables = trainable_variables(user, items)
    t = pc.train
    optimizer = make_optimizer(t.optimizer, t.learning_rate, t.lr_schedule, t.warmup_steps + 1, t.warmup_steps)
    optimizer.build(variables)
    try:
        tf.train.Checkpoint(user=user, items=items, optimizer=optimizer).restore(parent.latest) \
            .expect_partial().assert_existing_objects_matched()
        tf.train.Checkpoint(user=user, items=items).restore(parent.best).expect_partial() \
            .assert_existing_objects_matched()
    except (AssertionError, ValueError) as err:
        detail = str(err).strip().splitlines()[0][:200]
        raise RecallError(f"{parent.latest}: does not fit the model its config.yaml and vocabulary describe "
                          f"({detail}); the parent run is damaged or from another version of recall") from err
    same_optimizer = t.optimizer == cfg.train.optimizer
    if not same_optimizer:
        log.warning("warm start: train.optimizer %s → %s: the optimizer starts with fresh slots", t.optimizer,
                    cfg.train.optimizer)
    slots = {name: [s.numpy() for s in svars] for name, svars in optimizer_slots(optimizer).items()} \
        if same_optimizer else None
    reader = tf.train.load_checkpoint(parent.latest)
    keys = {name: f"sampler/estimator/{name}/.ATTRIBUTES/VARIABLE_VALUE" for name in _ESTIMATOR}
    estimator = ({name: reader.get_tensor(key) for name, key in keys.items()}
                 if all(reader.has_tensor(k) for k in keys.values()) else None)
    item_map = row_map(vocab.item_ids, data.split.item_ids)
    feature_maps = [feature_row_map(values, new) for (_, _, values), new in
                    zip(vocab.features, data.features.vocabs, strict=True)]
    report = {"items": _counts(item_map, len(vocab.item_ids)),
              "user_features": {name: _counts(fmap[1:], len(values))
                                for (name, _, values), fmap in zip(vocab.features, feature_maps, strict=True)}}
    if cfg.loss.uses_learned_unigram:
        log.info("warm start: learned_unigram keeps its counts inside TensorFlow's sampler op; they cannot be "
                 "carried and start afresh")
        report["learned_unigram_counts"] = "not carried: they live inside TensorFlow's sampler op"
    if cfg.model.temperature != pc.model.temperature:
        log.warning("warm start: model.temperature %s → %s rescales every logit of the carried model",
                    pc.model.temperature, cfg.model.temperature)
    weights = [v.numpy() for v in model_variables(user, items)]
    return WarmStart(parent, weights, slots, int(optimizer.iterations.numpy()), estimator, item_map,
                     feature_maps, report)


def _counts(old_of_new: np.ndarray, num_old: int) -> dict:
    """How many ids kept their learned rows, are new, and were dropped (known to the parent only)."""
    kept = int((old_of_new >= 0).sum())
    return {"kept": kept, "new": int(len(old_of_new) - kept), "dropped": int(num_old - kept)}
