"""The training entry point: the only module besides cli.py that sees the whole Config.

    prepare_data ─► build_model ─► train loop (step → log → validate → checkpoint) ─► test ─► export

Read `train` top to bottom to see a run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recall.config import Config, best_metric, config_from_dict, dump_config
from recall.data.examples import Examples, Queries, make_examples, make_queries
from recall.data.features import UserFeatures, empty_features, encode_user_features
from recall.data.split import Split, leave_last_out
from recall.errors import RecallError
from recall.io import run_dir_lock, write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class Data:
    """A prepared dataset: the split, the train examples, the eval queries and user feature codes."""

    split: Split
    examples: Examples
    valid: Queries
    test: Queries
    features: UserFeatures
    # data.shard_by_user on several workers: int64 [W, 3] — each worker's users, train interactions and
    # examples (this Data holds row `index`'s); None when this process holds every user.
    workers: np.ndarray | None = None

    def totals(self) -> dict:
        """The job's users, items, train interactions and examples (every worker's, when sharded)."""
        s = self.split
        users, interactions, examples = (self.workers.sum(axis=0).tolist() if self.workers is not None else
                                         (s.num_users, int(s.train_indptr[-1]), len(self.examples)))
        return {"users": int(users), "items": s.num_items, "train_interactions": int(interactions),
                "examples": int(examples)}


def load_interactions(cfg: Config, keep_users=None):
    """The interaction frame the config points at (built-in, file or synthetic); with `keep_users`
    (data/shards.py) only the rows of the users it keeps."""
    from recall.data.readers import builtin_dataset_path, read_interactions

    d = cfg.data
    if d.source == "synthetic":
        from recall.data.synthetic import synthesize

        df = synthesize(**d.synthetic.model_dump())
        return df if keep_users is None else df[keep_users(df["user_id"].to_numpy())].reset_index(drop=True)
    path = builtin_dataset_path(d.name) / "ratings.parquet" if d.source == "builtin" else d.path
    return read_interactions(path, fmt=d.format, delimiter=d.delimiter, columns=d.columns.model_dump(),
                             min_rating=d.min_rating, keep_users=keep_users)


def prepare_data(cfg: Config, collective=None) -> Data:
    """Interactions → split → examples and queries (all vectorised).

    `collective` (a worker of a job with data.shard_by_user, distributed/collect.py): read and prepare
    only this worker's users, in the vocabulary and time span the workers agree on (data/shards.py);
    collective: every worker calls it. Without one (or shard_by_user false), every user.
    """
    sharded = collective is not None and cfg.data.shard_by_user
    if sharded:
        from recall.data.shards import keep_users, sharded_split

        df = load_interactions(cfg, keep_users(collective.index, collective.num_workers))
        split = sharded_split(df, collective)
    else:
        split = leave_last_out(load_interactions(cfg))
    if split.num_items < 2:
        raise RecallError("data: fewer than 2 distinct items in train; a retrieval model needs a catalogue")
    examples = make_examples(split, cfg.model.max_history, cfg.train.min_history, cfg.train.max_examples_per_user)
    workers = None
    if sharded:  # each worker's share; a worker without examples is caught by the loop, on every worker
        workers = collective.per_worker([split.num_users, int(split.train_indptr[-1]), len(examples)])
    if (len(examples) if workers is None else workers[:, 2].sum()) == 0:
        raise RecallError("data: no training examples; lower train.min_history or give users longer histories")
    uf = cfg.data.user_features
    if uf is not None:  # no columns listed = every column but the key
        from recall.data.readers import read_user_features

        # Raw values: the prefix is applied in encode_user_features, which keeps both forms (the
        # export replays the raw ones through the served tower, which applies the prefix itself).
        table = read_user_features(uf.path, key=uf.key, columns=uf.columns)
        features = encode_user_features(table, split.user_ids, source=uf.path, prefix=uf.prefix)
        if sharded:
            from recall.data.shards import shared_feature_vocabularies

            features = shared_feature_vocabularies(features, collective)
    else:
        features = empty_features(split.num_users)
    m = cfg.model.max_history
    return Data(split, examples, make_queries(split, "valid", m), make_queries(split, "test", m), features,
                workers)


def native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Does this CPU multiply bfloat16 natively (AVX512-BF16 or AMX-BF16)? None if it cannot tell."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_compute_dtype(setting: str, native: bool | None = None) -> str:
    """`model.compute_dtype` → the dtype the tower uses: "auto" is bfloat16 only on a CPU that has it natively.
    An explicit bfloat16 on a CPU without it is kept, with a warning (emulated: slower than float32)."""
    if setting == "float32":
        return setting  # nothing to decide: no need to read the CPU's flags
    native = native_bfloat16() if native is None else native
    if setting == "auto":
        return "bfloat16" if native else "float32"
    if setting == "bfloat16" and native is False:
        log.warning("model.compute_dtype=bfloat16: this CPU has no AVX512-BF16 or AMX, so bfloat16 matmuls are "
                    "emulated and slower than float32; set model.compute_dtype=float32 or auto")
    return setting


def build_model(cfg: Config, num_items: int, feature_sizes: list[int]):
    """(user_tower, item_tower), built (weights created) so checkpoints can restore into them."""
    import math

    import keras
    import tensorflow as tf

    from recall.model import ItemTower, UserTower

    keras.utils.set_random_seed(cfg.seed)  # initial weights (and dropout streams) follow the config's seed
    mc = cfg.model
    compute_dtype = resolve_compute_dtype(mc.compute_dtype)
    # NCE/NEG fit a self-normalised model: start every bias at −log N (Z ≈ 1). At 0, a rare item seldom
    # drawn as a negative keeps its bias and outranks everything (quickstart, 1 epoch, dim 16: nce test
    # HR@50 0.000 with zeros vs 0.125 with −log N).
    bias_init = -math.log(num_items) if cfg.loss.kind in ("nce", "neg") and mc.item_bias else 0.0
    items = ItemTower(num_items, mc.dim, use_bias=mc.item_bias, normalize=mc.normalize, bias_init=bias_init,
                      name="items")
    user = UserTower(
        num_items, mc.dim, mc.hidden, mc.max_history, history=[h.model_dump() for h in mc.history],
        feature_sizes=feature_sizes, feature_dim=mc.feature_dim, example_age=mc.example_age,
        dropout=mc.dropout, normalize=mc.normalize, compute_dtype=compute_dtype,
        temperature=mc.temperature, shared_items=items if mc.tie_embeddings else None, name="user",
    )
    user({"history": tf.fill([1, mc.max_history], -1), "age": tf.zeros([1]),
          "user_features": tf.zeros([1, len(feature_sizes)], tf.int32)})
    return user, items


# What a resumed run may change: (dotted path, may change, why). A path stands for everything under
# it; the longest listed prefix of a field decides, and a field no row covers is refused (and fails
# tests/test_pipeline.py, which checks that every config field has a row). A new field is one line.
FIXED, FREE = False, True
RESUME_RULES: tuple[tuple[str, bool, str], ...] = (
    ("seed", FIXED, "the epoch order and every step's negatives are keyed on it"),
    ("run_dir", FREE, "where the run lives"),
    ("data", FIXED, "the interactions, the vocabulary and the examples the checkpoint learnt from"),
    ("model", FIXED, "the weights the checkpoint holds"),
    ("model.compute_dtype", FREE, "how the matmuls run, not what the checkpoint holds"),
    ("loss", FIXED, "the objective, its sampler and the sampler state in the checkpoint"),
    ("train.epochs", FREE, "how long to train (with lr_schedule cosine the decay is re-planned; a warning says so)"),
    ("train.batch_size", FIXED, "a mid-epoch checkpoint counts batches: another size resumes at other examples"),
    ("train.batching", FIXED, "positions or chunks of users' sequences: what a batch holds, so the order a "
     "mid-epoch checkpoint counts batches of"),
    ("train.sequence_length", FIXED, "with batching sequences, the chunks a batch is made of (compared only then)"),
    ("train.learning_rate", FIXED, "the rate the run is trained at (Keras restores the old constant rate "
     "from the checkpoint anyway)"),
    ("train.optimizer", FIXED, "its slots live in the checkpoint"),
    ("train.min_history", FIXED, "the example set: a mid-epoch resume would skip other examples"),
    ("train.max_examples_per_user", FIXED, "the example set: a mid-epoch resume would skip other examples"),
    ("train.shuffle", FIXED, "the epoch order: a mid-epoch resume would skip other examples"),
    ("train.early_stopping", FREE, "on or off, as long as the metric 'best' is measured by stays"),
    ("train.early_stopping.metric", FIXED, "the metric the kept best score was measured by (compared as "
     "resolved: without early stopping, HR at the largest K ≤ 50 in eval.ks)"),
    ("train.early_stopping.patience", FREE, "when to stop, not what 'best' means"),
    ("train.checkpoint_every_steps", FREE, "where checkpoints fall, not what is trained"),
    ("train.batch_splits", FREE, "the same examples and negatives, computed in parts"),
    ("train.steps_per_execution", FREE, "the same updates in the same order, fewer Python round trips"),
    ("train.deterministic", FREE, "kernel determinism, not the examples or their order"),
    ("train.intra_op_threads", FREE, "thread count"),
    ("train.inter_op_threads", FREE, "thread count"),
    ("train.lr_schedule", FIXED, "the optimizer's state differs between schedules (Keras cannot restore "
     "one into the other)"),
    ("train.warmup_steps", FIXED, "part of the learning-rate schedule the run is on"),
    ("eval.ks", FREE, "which Ks are reported (the metric 'best' is measured by is checked on its own)"),
    ("eval.batch_size", FREE, "evaluation speed"),
    ("eval.query_age", FIXED, "the validation scores the kept best score is compared with"),
    ("eval.index_recall_queries", FREE, "the final index-quality sample, not training"),
    ("index", FREE, "the final index (validation searches with it too: an approximate one measures a little "
     "lower)"),
    ("warm_start", FIXED, "the parent the run's weights started from"),
    ("warm_start.parent_config_hash", FREE, "recorded by the run when it starts; a resumed run keeps the recorded "
     "one"),
)


def _chunk_length(cfg: Config) -> int | None:
    """train.sequence_length where it shapes the batches (batching: sequences), else None."""
    return cfg.train.sequence_length if getattr(cfg.train, "batching", "positions") == "sequences" else None


# Rows compared by a resolved value rather than by the raw fields under them.
_RESOLVED = {"train.early_stopping.metric": best_metric, "train.sequence_length": _chunk_length}
_UNSET = object()


def resume_rule(path: str) -> tuple[str, bool, str] | None:
    """The RESUME_RULES row that decides `path` (the longest listed prefix), None when no row covers it."""
    rows = [r for r in RESUME_RULES if path == r[0] or path.startswith(r[0] + ".")]
    return max(rows, key=lambda r: len(r[0]), default=None)


def _differences(old, new, prefix: str = ""):
    """(dotted path, old value, new value) wherever two nested dicts differ; a section set on one side
    and null on the other differs as a whole (`data.user_features`), missing keys as _UNSET."""
    if not (isinstance(old, dict) and isinstance(new, dict) and old and new):
        if old != new:
            yield prefix.rstrip("."), old, new
        return
    for key in dict.fromkeys([*old, *new]):
        yield from _differences(old.get(key, _UNSET), new.get(key, _UNSET), f"{prefix}{key}.")


def resume_conflicts(old: Config, new: Config) -> list[tuple[str, object, object, str]]:
    """Every field a resumed run may not change that `new` changes: (dotted path, old, new, why)."""
    out = []
    for path, was, now in _differences(old.to_dict(), new.to_dict()):
        rule = resume_rule(path)
        if rule is None or not (rule[1] or rule[0] in _RESOLVED):
            out.append((path, was, now, rule[2] if rule else "not in RESUME_RULES"))
    for path, resolve in _RESOLVED.items():
        if resolve(old) != resolve(new):
            out.append((path, resolve(old), resolve(new), resume_rule(path)[2]))
    return out


def _shown(value) -> str:
    """A config value as typed in YAML / --set (strings bare, lists and null in flow style)."""
    text = "unset" if value is _UNSET else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_run_dir(cfg: Config, run_dir: Path) -> Config | None:
    """A run directory belongs to one experiment: resuming it with a change RESUME_RULES refuses (one
    that alters the examples, their order, the weights or what "best" means) is a RecallError.
    Returns the saved config (None for a new run directory)."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return None
    import yaml

    old = config_from_dict(yaml.safe_load(saved.read_text()), str(saved))
    conflicts = resume_conflicts(old, cfg)
    if conflicts:
        path, was, now, why = conflicts[0]
        more = f" (and {len(conflicts) - 1} more field(s))" if len(conflicts) > 1 else ""
        raise RecallError(f"{run_dir}: was trained with {path}={_shown(was)}, not {_shown(now)}{more} — {why}; "
                          f"set it back to resume, or use a new --run-dir (or delete the old one) to start over")
    if old.train.epochs != cfg.train.epochs and cfg.train.lr_schedule == "cosine":
        log.warning("%s: train.epochs %d → %d with lr_schedule cosine: the decay is re-planned over the new "
                    "total, so the learning rate jumps at the resumed step", run_dir, old.train.epochs,
                    cfg.train.epochs)
    return old


def _with_parent_hash(cfg: Config, parent_hash: str | None) -> Config:
    """`cfg` with warm_start.parent_config_hash set (the lineage config.yaml records)."""
    ws = cfg.warm_start.model_copy(update={"parent_config_hash": parent_hash})
    return cfg.model_copy(update={"warm_start": ws})


def lineage(cfg: Config, run_dir: Path) -> dict | None:
    """The run's parent (run dir, config hash) and what the warm start carried (lineage.json); None when cold."""
    if cfg.warm_start is None:
        return None
    path = run_dir / "lineage.json"
    carried = json.loads(path.read_text()) if path.is_file() else {}
    return {**carried, "parent_run_dir": cfg.warm_start.run_dir,
            "parent_config_hash": cfg.warm_start.parent_config_hash}


def train(cfg: Config, run_dir: str | Path | None = None, on_epoch=None) -> dict:
    """Train (resuming from the run directory's latest checkpoint, or warm-starting from
    `cfg.warm_start`'s run on a new one), evaluate on test, export.

    Returns the metrics dict that is also written to `run_dir/metrics.json`. `on_epoch`: see loop.fit.

    With a `TF_CONFIG` in the environment (distributed/cluster.py) this process is one worker of a
    data-parallel job (MultiWorkerMirroredStrategy): the chief (worker 0) trains and writes the run
    directory as above; another worker trains with it, writes nothing there, and returns
    {"worker": index, "train": summary}. With `data.shard_by_user` each worker reads, trains on and
    evaluates only its share of the users (data/shards.py); the metrics are the job's (summed counts).
    """
    from recall.distributed.cluster import cluster_from_env

    run_dir = Path(run_dir or cfg.run_dir or "runs/default")
    cluster = cluster_from_env()
    if cluster is not None:
        check_distributed_config(cfg, cluster.num_workers)
    saved = _check_run_dir(cfg, run_dir)
    if cfg.warm_start is not None and saved is not None and saved.warm_start is not None:
        cfg = _with_parent_hash(cfg, saved.warm_start.parent_config_hash)  # a resume keeps the recorded lineage
    if cfg.model.compute_dtype == "auto":
        # Decided once, on the training machine, and written to the run's config.yaml: evaluate and
        # export elsewhere compute as training did.
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"compute_dtype": resolve_compute_dtype("auto")})})
    job = None
    if cluster is not None and cfg.data.shard_by_user:
        # The workers agree on the vocabulary over the strategy's collectives, so the strategy comes
        # first (and TensorFlow with it): its collective runtime is set up before TF runs any op.
        from recall.distributed.cluster import make_strategy, peers_lost_as_error
        from recall.distributed.collect import Collective

        _set_threads(cfg.train.intra_op_threads, cfg.train.inter_op_threads)
        strategy = make_strategy()
        job = (strategy, Collective(strategy, cluster.index))
        with peers_lost_as_error(cluster.index, cluster.num_workers, run_dir):
            data = prepare_data(cfg, job[1])
    else:
        data = prepare_data(cfg)
    s = data.split
    # Checked before the run directory is created: a config.yaml left by a refused run would make
    # the corrected rerun fail _check_run_dir ("holds a run with a different 'loss' section").
    lc = cfg.loss
    if lc.kind != "full_softmax" and lc.sampler != "in_batch" and lc.num_sampled >= s.num_items:
        raise RecallError(f"loss.num_sampled={lc.num_sampled} must be smaller than the catalogue "
                          f"({s.num_items} items); lower it or use loss.kind=full_softmax")
    ks = cfg.eval.ks
    if ks[-1] > s.num_items:  # sorted; a K past the catalogue ranks everything and measures nothing
        fit_ks = ",".join(str(k) for k in ks if k <= s.num_items) or str(s.num_items)
        raise RecallError(f"eval.ks: K={ks[-1]} is larger than the catalogue ({s.num_items} train items); "
                          f"use Ks of at most {s.num_items}, e.g. --set eval.ks=[{fit_ks}]")
    from recall.index import check_index_config

    ix = cfg.index
    check_index_config(s.num_items, cfg.model.dim + int(cfg.model.item_bias), ix.factory, ix.nprobe, ix.ef_search)
    # TensorFlow is imported only once the inputs are known to be good.
    import tensorflow as tf

    from recall.training.loop import fit

    _set_threads(cfg.train.intra_op_threads, cfg.train.inter_op_threads)  # before TF runs its first op
    if cluster is not None:
        return _train_distributed(cfg, data, run_dir, cluster, on_epoch, job)
    warm = None
    if cfg.warm_start is not None and tf.train.latest_checkpoint(str(run_dir / "checkpoints")) is None:
        from recall.warm_start import prepare_warm_start, read_parent

        # Before the new model is built (building re-seeds: its fresh rows are then a cold run's) and
        # before anything is written: a refused parent leaves no run directory behind.
        parent = read_parent(cfg.warm_start.run_dir, cfg.warm_start.parent_config_hash, own_dir=run_dir)
        warm = prepare_warm_start(cfg, data, parent)
        cfg = _with_parent_hash(cfg, parent.config_hash)

    log.info("data: %d users, %d items, %d train interactions, %d examples",
             s.num_users, s.num_items, int(s.train_indptr[-1]), len(data.examples))
    from recall.data.vocabulary import write_vocabulary

    with run_dir_lock(run_dir):
        write_text(run_dir / "config.yaml", dump_config(cfg))
        write_vocabulary(run_dir / "vocabulary", s.item_ids, data.features)  # what a warm start maps from
        user, items = build_model(cfg, s.num_items, data.features.sizes)
        summary = fit(cfg, data, user, items, run_dir, warm=warm, on_epoch=on_epoch)
        return _finish(cfg, data, user, items, summary, run_dir, lineage(cfg, run_dir))


def _finish(cfg: Config, data: Data, user, items, summary: dict, run_dir: Path, lineage_record,
            metrics: dict | None = None) -> dict:
    """After training: test metrics (unless given), the export (with its parity check), metrics.json,
    TensorBoard, report."""
    from recall.bundle import export_bundle
    from recall.evaluation.parity import ParityError
    from recall.report import write_report

    metrics = _final_metrics(cfg, data, user, items, summary) if metrics is None else metrics
    metrics["lineage"] = lineage_record
    try:
        metrics["export_parity"] = export_bundle(cfg, data, user, items, run_dir / "export")
    except ParityError as refused:  # the figures still go to metrics.json, then the run fails (exit 2)
        metrics["export_parity"] = refused.parity
        raise
    finally:
        write_json(run_dir / "metrics.json", metrics)
        _log_final_scalars(run_dir, metrics)
        write_report(run_dir, metrics)
    return metrics


def check_distributed_config(cfg: Config, num_workers: int) -> None:
    """What training on several workers does not support (yet): a RecallError naming the field."""
    how = f"train on one process (unset TF_CONFIG / drop --workers) to use it; {num_workers} workers were asked for"
    if cfg.loss.uses_learned_unigram:
        raise RecallError("loss.sampler=learned_unigram: its counts live in each process's TensorFlow op, so the "
                          "workers would draw different negatives; use unigram (or log_uniform), or " + how)
    if cfg.warm_start is not None:
        raise RecallError(f"warm_start: not supported with several workers yet; {how}")


def _train_distributed(cfg: Config, data: Data, run_dir: Path, cluster, on_epoch=None, job=None) -> dict:
    """`train` as one worker of a MultiWorkerMirroredStrategy job (see `train`). `job`: (strategy,
    collective) when data.shard_by_user made them before the data was prepared."""
    import tempfile

    from recall.distributed.cluster import make_strategy, peers_lost_as_error
    from recall.training.loop import Worker, fit

    # Made here, unless sharding made it first: before any TensorFlow op, it sets up the collective runtime.
    strategy, collective = job if job is not None else (make_strategy(), None)
    s = data.split
    if data.workers is not None:
        users, interactions, examples = data.workers[cluster.index].tolist()
        print(f"worker {cluster.index} of {cluster.num_workers}: data.shard_by_user: {users} of "
              f"{int(data.workers[:, 0].sum())} users, {interactions} train interactions, {examples} examples; "
              f"{s.num_items} items", flush=True)
    else:
        log.info("worker %d of %d: data: %d users, %d items, %d examples", cluster.index, cluster.num_workers,
                 s.num_users, s.num_items, len(data.examples))
    worker = Worker(strategy, cluster.index, run_dir, collective)
    lost = peers_lost_as_error(cluster.index, cluster.num_workers, run_dir)
    if not cluster.is_chief:
        # Scratch for what every worker must write but only the chief's counts (checkpoints, history).
        with tempfile.TemporaryDirectory(prefix=f"recall-worker{cluster.index}-") as scratch:
            with strategy.scope():
                user, items = build_model(cfg, s.num_items, data.features.sizes)
            with lost:
                summary = fit(cfg, data, user, items, Path(scratch), on_epoch=on_epoch, worker=worker)
                if collective is not None:  # the final evaluation's counts are summed with this worker's
                    _final_metrics(cfg, data, user, items, summary, collective, index_quality=False)
        return {"worker": cluster.index, "train": summary}

    from recall.data.vocabulary import write_vocabulary

    with run_dir_lock(run_dir):
        write_text(run_dir / "config.yaml", dump_config(cfg))
        write_vocabulary(run_dir / "vocabulary", s.item_ids, data.features)
        with strategy.scope():
            user, items = build_model(cfg, s.num_items, data.features.sizes)
        with lost:
            summary = fit(cfg, data, user, items, run_dir, on_epoch=on_epoch, worker=worker)
            summary["workers"] = cluster.num_workers
            metrics = _final_metrics(cfg, data, user, items, summary, collective)
        return _finish(cfg, data, user, items, summary, run_dir, None, metrics)


def _set_threads(intra: int | None, inter: int | None) -> None:
    """Apply train.intra_op_threads / inter_op_threads. TF fixes its thread pools when it first runs
    an op, so in a process that already ran TensorFlow (the Python API after other TF work) the
    setting cannot take effect: that is said, and training goes on with the pools TF has."""
    import tensorflow as tf

    for value, current, setter, name in (
            (intra, tf.config.threading.get_intra_op_parallelism_threads,
             tf.config.threading.set_intra_op_parallelism_threads, "intra_op_threads"),
            (inter, tf.config.threading.get_inter_op_parallelism_threads,
             tf.config.threading.set_inter_op_parallelism_threads, "inter_op_threads")):
        if value is None or current() == value:
            continue
        try:
            setter(value)
        except RuntimeError:
            log.warning("train.%s=%d not applied: TensorFlow already started its thread pools in this process "
                        "(set it before any TensorFlow work, or use the CLI)", name, value)


def _final_metrics(cfg: Config, data: Data, user, items, summary: dict, collective=None,
                   index_quality: bool = True) -> dict:
    """valid/test metrics, the most-popular baseline, the data's size and the index's quality.

    `collective` (a job sharded by user): this worker's users are evaluated and the counts summed over
    the workers (collective: every worker calls it), so the metrics are those of all users; the index
    quality is measured on this worker's test queries (the chief's, in metrics.json; a worker that
    writes nothing skips it: `index_quality` false)."""
    from recall.evaluation.model_eval import (
        build_item_index,
        combine_counts,
        evaluate_index,
        queries_for,
    )
    from recall.evaluation.protocol import counts_metrics, popularity_counts, query_counts

    ks, ix, counts, bs = cfg.eval.ks, cfg.index, data.split.item_counts, cfg.eval.batch_size
    # One index serves both splits and the index-quality measurement, so HR@K and index recall
    # describe the same index (HNSW builds are not reproducible across threads).
    index, vectors, with_bias = build_item_index(items, ix.factory, ix.nprobe, ix.ef_search)
    out, vectors_of = {}, {}
    for name, queries in (("valid", data.valid), ("test", data.test)):
        t0 = time.perf_counter()
        q = queries_for(user, queries, data.features.codes, with_bias, bs, cfg.eval.query_age)
        local = query_counts(index, q, queries.targets, queries.seen, ks, batch_size=bs, item_counts=counts)
        out[name] = counts_metrics(combine_counts(local, collective), ks, counts)
        out[name]["seconds"] = round(time.perf_counter() - t0, 3)
        vectors_of[name] = q
    popular = popularity_counts(data.test.targets, data.test.seen, ks, item_counts=counts)
    out["most_popular"] = {"test": counts_metrics(combine_counts(popular, collective), ks, counts)}
    out["train"] = summary
    out["data"] = data.totals()
    if data.workers is not None:
        out["data"]["workers"] = [dict(zip(("users", "train_interactions", "examples"), row))
                                  for row in data.workers.tolist()]
    if not index_quality:
        return out
    # Index recall against exact search (approximate factories) and queries/s, on the test queries.
    out["index"] = {"factory": ix.factory,
                    **evaluate_index(index, vectors, vectors_of["test"], data.test.seen, ks, batch_size=bs,
                                    max_queries=cfg.eval.index_recall_queries)}
    return out


def _log_final_scalars(run_dir: Path, metrics: dict) -> None:
    """The final test/valid metrics (both variants) and index quality as TensorBoard scalars."""
    import tensorflow as tf

    step = int(metrics.get("train", {}).get("steps") or 0)
    with tf.summary.create_file_writer(str(run_dir / "tensorboard")).as_default(step=step):
        for split in ("test", "valid"):
            for variant in ("filtered", "unfiltered"):
                for key, value in metrics[split][variant].items():
                    if "@" in key:
                        tf.summary.scalar(f"{split}_{variant}/{key}", value)
        for key, value in metrics.get("index", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(f"index/{key}", value)


def load_run(run_dir: str | Path):
    """(cfg, data, user_tower, item_tower) of a trained run, with its best weights restored."""
    import tensorflow as tf
    import yaml

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise RecallError(f"{run_dir}: not a run directory (no config.yaml); pass the directory `recall train` wrote")
    cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
    data = prepare_data(cfg)
    user, items = build_model(cfg, data.split.num_items, data.features.sizes)
    best = tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "best"))
    if best is None:
        raise RecallError(f"{run_dir}/checkpoints/best: no trained weights; run `recall train` on it first")
    try:  # every weight of the model must come from the checkpoint, in its shape (optimizer slots may be left)
        tf.train.Checkpoint(user=user, items=items).restore(best).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as err:
        detail = str(err).strip().splitlines()[0].split(". ")[0].rstrip(".")[:200]  # its first sentence
        raise RecallError(f"{best}: the checkpoint does not fit the model that {cfg_path.name} describes ({detail}); "
                          "it was written for another config or version of recall — retrain with `recall train`") from err
    return cfg, data, user, items


def evaluate(run_dir: str | Path, factory: str | None = None) -> dict:
    """Re-evaluate a trained run (optionally with another faiss index); rewrites metrics.json and report.md."""
    from recall.report import write_report

    cfg, data, user, items = load_run(run_dir)
    if factory:
        cfg.index.factory = factory
    path = Path(run_dir) / "metrics.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    metrics = _final_metrics(cfg, data, user, items, previous.get("train", {}))
    metrics["lineage"] = lineage(cfg, Path(run_dir))
    if "export_parity" in previous:  # describes the bundle, which evaluating does not change
        metrics["export_parity"] = previous["export_parity"]
    write_json(path, metrics)
    _log_final_scalars(Path(run_dir), metrics)
    write_report(run_dir, metrics)
    return metrics


def export(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the export bundle of a trained run (default `run_dir/export`), once it passes the parity check.

    The parity figures go into the bundle's manifest.json and into the run's metrics.json
    ("export_parity", with the bundle's path), also when the bundle is refused (ParityError, exit 2).
    """
    from recall.bundle import export_bundle
    from recall.evaluation.parity import ParityError

    cfg, data, user, items = load_run(run_dir)
    out = Path(out_dir or Path(run_dir) / "export")
    try:
        parity = export_bundle(cfg, data, user, items, out)
    except ParityError as refused:
        _record_parity(Path(run_dir), {**refused.parity, "bundle": str(out)})
        raise
    _record_parity(Path(run_dir), {**parity, "bundle": str(out)})
    return out


def _record_parity(run_dir: Path, parity: dict) -> None:
    """Put an export's parity figures into the run's metrics.json (when it has one), atomically."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: not valid JSON; the export parity figures are only in the bundle's manifest.json", path)
        return
    write_json(path, {**metrics, "export_parity": parity})
