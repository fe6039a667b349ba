"""Typed, validated configuration: YAML → pydantic models (`extra="forbid"`, so a typo is an error).

Every section documents its fields; `load_config` applies `--set a.b=value` overrides before
validation, so overrides are checked exactly like the file. Errors come back as one `RecallError`
listing every problem with its dotted path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recall.errors import RecallError


class _Section(BaseModel):
    # inf/nan pass a `gt=0` check and would only surface as a NaN loss hours later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ColumnsConfig(_Section):
    """Names of the interaction columns in the input file."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str = "rating"
    weight: str | None = Field(None, description="an optional per-interaction weight (e.g. watch time): it "
                               "multiplies the loss of the example whose label is that interaction")


class SyntheticConfig(_Section):
    """A generated dataset: power-law item popularity plus latent user tastes a model can learn."""

    num_users: int = Field(2000, ge=10)
    num_items: int = Field(1000, ge=10)
    interactions_per_user: float = Field(30.0, gt=3)
    num_topics: int = Field(20, ge=1)
    popularity_exponent: float = Field(1.0, ge=0.0, description="Zipf exponent of item popularity")
    taste_concentration: float = Field(0.3, gt=0.0, description="Dirichlet α of a user's topic mix")
    drift: float = Field(0.2, ge=0.0, le=1.0, description="chance per step that the user's topic changes")
    seed: int = Field(0, ge=0)


class UserFeaturesConfig(_Section):
    """An optional user side table (e.g. ML-1M users.dat / users.parquet), joined on `key`."""

    path: str
    key: str = "user_id"
    columns: list[str] = Field(default_factory=list, description="categorical columns to use (empty = all but the key)")
    prefix: dict[str, int] = Field(
        default_factory=dict, description="keep only the first n characters of a column (zip codes)"
    )


class DataConfig(_Section):
    """Where the interactions come from and how rows are filtered."""

    source: Literal["builtin", "file", "synthetic"] = "builtin"
    name: Literal["ml-latest-small"] = "ml-latest-small"
    path: str | None = Field(None, description="a file, or a folder holding ratings.{parquet,csv,dat}")
    format: Literal["auto", "parquet", "csv", "movielens"] = "auto"
    delimiter: str | None = Field(None, description="CSV delimiter; None sniffs it")
    columns: ColumnsConfig = ColumnsConfig()
    min_rating: float | None = Field(None, description="drop rows rated below this (explicit → implicit)")
    user_features: UserFeaturesConfig | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    shard_by_user: bool = Field(
        False, description="with several workers: each reads, splits and trains only its share of the users "
        "(a hash of the user id); item counts and evaluation counts are summed across workers (README "
        "'Training on several machines'). No effect in one process")

    @model_validator(mode="after")
    def _path_for_files(self) -> DataConfig:
        if self.source == "file" and not self.path:
            raise ValueError("data.source is 'file' but data.path is not set: give the file or folder")
        return self


class _Encoder(_Section):
    def reads(self, max_history: int) -> int:
        """How many of the latest history items this encoder reads."""
        return self.window if self.window is not None else max_history


class MeanEncoderConfig(_Encoder):
    """Mean of the latest `window` items (unset = all of model.max_history)."""

    kind: Literal["mean"]
    window: int | None = Field(None, ge=1)


class RecentEncoderConfig(_Encoder):
    """Mean of the latest `window` items, and the latest item itself (2·dim wide)."""

    kind: Literal["recent"]
    window: int = Field(5, ge=1)


class LastItemsEncoderConfig(_Encoder):
    """The latest `window` items, each in its own slot (window·dim wide): the MLP sees their order."""

    kind: Literal["last_items"]
    window: int = Field(1, ge=1)


class AttentionEncoderConfig(_Encoder):
    """Attention pooling over the latest `window` items (unset = max_history), the latest item as query."""

    kind: Literal["attention"]
    window: int | None = Field(None, ge=1)


class GRUEncoderConfig(_Encoder):
    """A GRU over the latest `window` items. With train.batching=sequences it runs along the chunk
    (the one encoder whose training and serving forms differ; see recall/model/encoders/gru.py)."""

    kind: Literal["gru"]
    window: int = Field(20, ge=1)


class MinGRUEncoderConfig(_Encoder):
    """A minGRU over the latest `window` items: gates from each item alone, so it is a gated pooling."""

    kind: Literal["min_gru"]
    window: int = Field(20, ge=1)
    heads: int | None = Field(None, ge=1, description="gates, each shared by dim / heads units (unset = dim: "
                              "one per unit, Feng et al.'s minGRU); fewer is cheaper; must divide model.dim")


class TransformerEncoderConfig(_Encoder):
    """SASRec-style self-attention, banded: each item attends to the `band` items up to itself, with a
    learned bias per distance; reads the latest blocks·(band − 1) + 1 items."""

    kind: Literal["transformer"]
    band: int = Field(8, ge=1, le=10000)
    blocks: int = Field(2, ge=1, le=64)
    heads: int = Field(1, ge=1, le=64, description="attention heads; must divide model.dim")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)

    def reads(self, max_history: int) -> int:
        return self.blocks * (self.band - 1) + 1


EncoderConfig = Annotated[
    MeanEncoderConfig | RecentEncoderConfig | LastItemsEncoderConfig | AttentionEncoderConfig | GRUEncoderConfig
    | MinGRUEncoderConfig | TransformerEncoderConfig,
    Field(discriminator="kind"),
]

# Keys of the flag-per-encoder model section (before model.history), and what replaced each.
_REPLACED_MODEL_KEYS = {
    "recent": "{kind: recent, window: N}",
    "last_items": "{kind: last_items, window: N}",
    "attention": "{kind: attention}",
    "gru": "{kind: gru, window: N}",
    "min_gru": "{kind: min_gru, window: N}",
    "min_gru_heads": "{kind: min_gru, window: N, heads: H}",
    "transformer": "{kind: transformer, band: B, blocks: K, heads: H, dropout: P}",
    "transformer_blocks": "{kind: transformer, blocks: K}",
    "transformer_heads": "{kind: transformer, heads: H}",
    "transformer_dropout": "{kind: transformer, dropout: P}",
}


class ModelConfig(_Section):
    """The user tower and the item table."""

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            old = [k for k in _REPLACED_MODEL_KEYS if k in raw]
            if old:
                raise ValueError(
                    "; ".join(f"model.{k} was replaced by an entry of model.history, e.g. {_REPLACED_MODEL_KEYS[k]}"
                              for k in old)
                    + " (the history mean is {kind: mean}; see README 'Config reference')")
        return raw

    @model_validator(mode="after")
    def _windows_fit(self) -> ModelConfig:
        if "history" not in self.model_fields_set:  # the default encoders read at most max_history items
            self.__dict__["history"] = [e.model_copy(update={"window": min(e.window, self.max_history)})
                                        if e.window is not None else e for e in self.history]
        for i, enc in enumerate(self.history):
            reads = enc.reads(self.max_history)
            if reads > self.max_history:
                raise ValueError(f"model.history.{i} ({enc.kind}) reads the latest {reads} items, more than "
                                 f"model.max_history ({self.max_history}); raise max_history or shrink the encoder")
            heads = getattr(enc, "heads", None)
            if heads is not None and self.dim % heads:
                raise ValueError(f"model.dim ({self.dim}) must be divisible by model.history.{i}.heads ({heads}); "
                                 "change one of them")
        return self

    dim: int = Field(64, ge=1, le=4096, description="output dimension D of both towers")
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [512], description="ReLU MLP widths before the output layer")
    max_history: int = Field(50, ge=1, le=10000, description="most recent items kept in the history")
    history: list[EncoderConfig] = Field(
        default_factory=lambda: [MeanEncoderConfig(kind="mean"), RecentEncoderConfig(kind="recent", window=5),
                                 GRUEncoderConfig(kind="gru", window=20)], min_length=1,
        description="the history encoders whose outputs are concatenated before the MLP (default: the "
        "cross-dataset recipe of benchmarks/recipes.py, [{kind: mean}, {kind: recent, window: 5}, "
        "{kind: gru, window: 20}], windows cut to max_history; [{kind: mean}, {kind: recent, window: 5}] is 2-4x "
        "faster to train)")
    tie_embeddings: bool = Field(True, description="history embeddings share the output item table")
    compute_dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "auto", description="dtype of the user tower's GRU and hidden-layer matmuls: bfloat16 is faster on "
        "CPUs with AVX512-BF16 or AMX; weights, embeddings, the GRU state, the query vector and the loss stay "
        "float32; auto = bfloat16 where the CPU has those instructions, else float32")
    item_bias: bool = True
    feature_dim: int = Field(16, ge=1, le=4096, description="embedding width of each categorical user feature")
    example_age: bool = Field(True, description="Covington et al.'s example-age feature (served as 0)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="after each hidden layer")
    normalize: bool = Field(False, description="L2-normalise both towers (cosine); use with temperature")
    temperature: float = Field(1.0, gt=0.0, description="logits are divided by this")


class LossConfig(_Section):
    """The softmax approximation and its candidate sampler."""

    kind: Literal["sampled_softmax", "full_softmax", "nce", "neg"] = Field(
        "sampled_softmax", description="neg = word2vec negative sampling: logistic loss without log Q"
    )
    sampler: Literal["log_uniform", "uniform", "unigram", "learned_unigram", "in_batch", "mixed"] = "log_uniform"
    num_sampled: int = Field(300, ge=1, description="negatives per batch, shared by every row (mixed: besides the batch)")
    unique: bool = True
    remove_accidental_hits: bool | None = Field(
        None, description="mask the candidate column equal to the row's label (one copy per id, as TF does); "
        "unset = auto: true for sampled_softmax and with in_batch/mixed, false for nce/neg (TF's nce_loss default)"
    )
    distortion: float = Field(1.0, ge=0.0, description="unigram counts are raised to this power")
    logq_correction: bool = Field(True, description="subtract log Q (false = biased, for study)")
    mixed_base: Literal["log_uniform", "uniform", "unigram", "learned_unigram"] = Field(
        "unigram", description="the sampler whose candidates `mixed` adds to the batch's labels"
    )
    frequency: Literal["counted", "streaming"] = Field(
        "counted", description="in_batch/mixed item frequency: training counts, or Yi et al.'s online estimate"
    )
    streaming_alpha: float = Field(0.01, gt=0.0, le=1.0, description="learning rate of the streaming estimator")

    @model_validator(mode="after")
    def _resolve_accidental_hits(self) -> LossConfig:
        """The one place `remove_accidental_hits` is resolved: unset (None, or never given) → the loss's
        default, so the validated config — and the config.yaml a run saves — always holds a bool."""
        in_batch = self.sampler in ("in_batch", "mixed")
        if self.remove_accidental_hits is None or "remove_accidental_hits" not in self.model_fields_set:
            # Written into __dict__: not an explicit setting, so a later change of `kind` re-resolves it.
            self.__dict__["remove_accidental_hits"] = self.kind not in ("nce", "neg") or in_batch
        if in_batch and not self.remove_accidental_hits:
            raise ValueError(
                "loss.remove_accidental_hits must be true with in_batch/mixed: each row's own positive is "
                "among the candidates and must not count as its negative"
            )
        return self

    @property
    def uses_learned_unigram(self) -> bool:
        """True when negatives come from TF's learned-unigram op (itself or as the mixed base): it
        keeps its counts inside the op, so it has no stateless (seed, step)-keyed twin."""
        return self.kind != "full_softmax" and (
            self.sampler == "learned_unigram" or (self.sampler == "mixed" and self.mixed_base == "learned_unigram"))


class EarlyStoppingConfig(_Section):
    metric: str = Field("hr@50", pattern=r"^(hr|ndcg)@\d+$")
    patience: int = Field(3, ge=1, description="epochs without improvement before stopping")


class TrainConfig(_Section):
    """The optimisation loop."""

    epochs: int = Field(12, ge=1, description="with lr_schedule=cosine also the schedule's length")
    batch_size: int = Field(512, ge=1, description="examples per step (sequences: labelled positions, at most; "
                            "batch_size / sequence_length chunks)")
    batching: Literal["positions", "sequences"] = Field(
        "sequences", description="positions: each example encodes its own history (YouTube-DNN); sequences: "
        "chunks of users' sequences, one causal pass each gives every position's query (SASRec-style; "
        "the same examples at a fraction of the work; README 'Two batching modes')")
    sequence_length: int = Field(8, ge=1, le=100000, description="sequences: labelled positions per chunk "
                                 "(each chunk also reads the model.max_history items before it)")
    learning_rate: float = Field(2e-3, gt=0.0)
    optimizer: Literal["adam", "adagrad", "sgd", "lazy_adam", "lazy_adagrad"] = Field(
        "adam", description="lazy_adam: Adam that updates only the embedding rows a batch touched (a step's cost "
        "does not grow with the catalogue; untouched rows keep their moments); lazy_adagrad: Adagrad, row-wise "
        "(same result as adagrad, faster on large catalogues)"
    )
    min_history: int = Field(1, ge=0, description="skip examples whose history is shorter than this")
    max_examples_per_user: int | None = Field(None, ge=1, description="keep each user's latest n examples")
    shuffle: bool = True
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    checkpoint_every_steps: int = Field(0, ge=0, description="extra checkpoints within an epoch (0 = per epoch only)")
    batch_splits: int = Field(
        1, ge=1, le=64, description="compute each batch's user tower as this many parts in parallel (one per "
        "core, with intra_op_threads: 1): the same negatives and loss; only dropout masks are drawn per part. "
        "The compiled block holds steps_per_execution × batch_splits copies of the tower (longer tracing)")
    steps_per_execution: int = Field(
        8, ge=1, le=256, description="training steps run inside one compiled call (fewer Python round trips; "
        "same updates, same order)"
    )
    deterministic: bool = Field(
        False, description="TensorFlow op determinism: with negatives already drawn from (seed, step), a killed and "
        "resumed run ends with exactly the weights of an uninterrupted one (no learned_unigram)"
    )
    intra_op_threads: int | None = Field(
        None, ge=1, le=1024, description="threads one TensorFlow op may use (None = TF's default, all cores); 1 "
        "runs the small ops of a retrieval step faster on few cores (benchmarks/RESULTS.md, issue 6)"
    )
    inter_op_threads: int | None = Field(
        None, ge=1, le=1024, description="ops TensorFlow may run at once (None = TF's default)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: decay from learning_rate to 0 over epochs × batches per epoch "
        "(driven by the optimizer's step, which the checkpoint holds, so a resumed run continues it)")
    warmup_steps: int = Field(0, ge=0, description="cosine only: rise linearly from 0 to learning_rate first")

    @model_validator(mode="after")
    def _splits_fit_batch(self) -> TrainConfig:
        if self.batch_splits > self.batch_size:
            raise ValueError(f"train.batch_splits ({self.batch_splits}) cannot exceed train.batch_size "
                             f"({self.batch_size}); use at most one part per row (one per core is the point)")
        return self

    @model_validator(mode="after")
    def _chunks_fit_batch(self) -> TrainConfig:
        if self.batching == "sequences":
            if self.batch_size % self.sequence_length:
                raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of train.sequence_length "
                                 f"({self.sequence_length}) with train.batching=sequences (a batch is whole chunks)")
            if self.batch_splits > self.batch_size // self.sequence_length:
                raise ValueError(f"train.batch_splits ({self.batch_splits}) cannot exceed the chunks per batch "
                                 f"({self.batch_size // self.sequence_length} = batch_size / sequence_length)")
        return self

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> TrainConfig:
        if self.warmup_steps and self.lr_schedule != "cosine":
            raise ValueError(f"train.warmup_steps ({self.warmup_steps}) needs train.lr_schedule=cosine; "
                             "set it, or set train.warmup_steps=0")
        return self


class EvalConfig(_Section):
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50, 100, 200])
    batch_size: int = Field(2048, ge=1)
    query_age: Literal["zero", "last_event"] = Field(
        "zero", description="example age fed to evaluation queries: 0 (as served live) or that of the query's last event"
    )
    index_recall_queries: int = Field(
        10000, ge=1, description="an approximate index's recall against exact search is measured on at most this "
        "many test queries (a fixed random sample): exact search is what the index exists to avoid"
    )

    @model_validator(mode="after")
    def _ks_positive(self) -> EvalConfig:
        if not self.ks or min(self.ks) < 1:
            raise ValueError("eval.ks must be a non-empty list of positive integers")
        self.__dict__["ks"] = sorted(set(self.ks))
        return self


class IndexConfig(_Section):
    factory: str = Field("Flat", description="any faiss.index_factory string, e.g. 'IVF64,Flat', 'HNSW32'")
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)


class WarmStartConfig(_Section):
    """Start a new run from an earlier run's weights (README "Retraining on fresh data"). A bare path
    (`warm_start: runs/day-41`, or `recall train CONFIG --warm-start runs/day-41`) sets `run_dir`."""

    run_dir: str = Field(description="the parent run directory: its best weights and its last checkpoint's "
                         "optimizer slots and frequency estimate are carried, row by row, to the new vocabulary")
    parent_config_hash: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="the parent's Config.hash(), recorded by the run when it "
        "starts (lineage); when set, the parent's config.yaml must still have this hash")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, raw: Any) -> Any:
        return {"run_dir": raw} if isinstance(raw, str) else raw


class Config(_Section):
    """The whole run."""

    seed: int = Field(42, ge=0, description="seeds TF and the per-epoch shuffle (numpy refuses negative seeds)")
    run_dir: str | None = Field(None, description="default: runs/<config file name>")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    index: IndexConfig = IndexConfig()
    warm_start: WarmStartConfig | None = Field(
        None, description="the parent run this run starts from (weights, optimizer slots, frequency estimate, "
        "moved to the new vocabulary's rows); null = a cold start")

    @model_validator(mode="after")
    def _early_stopping_metric_is_evaluated(self) -> Config:
        es = self.train.early_stopping
        if es is not None:
            k = int(es.metric.split("@")[1])
            if k not in self.eval.ks:
                raise ValueError(
                    f"train.early_stopping.metric {es.metric!r} is not computed: add {k} to eval.ks "
                    f"({self.eval.ks}) or pick one of {', '.join(f'hr@{x}' for x in self.eval.ks)}"
                )
        return self

    @model_validator(mode="after")
    def _deterministic_sampler(self) -> Config:
        if self.train.deterministic and self.loss.uses_learned_unigram:
            raise ValueError(
                "train.deterministic: learned_unigram keeps its counts inside TensorFlow's op, so a resumed run "
                "cannot replay it; use loss.sampler (or loss.mixed_base) unigram, or train.deterministic=false"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """sha256 of the resolved config (stable key order) — recorded in the export manifest."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def best_metric(cfg: Config) -> str:
    """The validation metric "best" is measured by: the early-stopping metric, or without early
    stopping HR at the largest K ≤ 50 in eval.ks (the smallest K when every K is larger)."""
    es = cfg.train.early_stopping
    return es.metric if es else f"hr@{max([k for k in cfg.eval.ks if k <= 50] or [min(cfg.eval.ks)])}"


def _format_errors(err: ValidationError, origin: str) -> str:
    parts = []
    for e in err.errors():
        # A key as typed (repr when it is not a plain name, so '\n' or '' cannot break the one-line message).
        loc = ".".join(p if isinstance(p, str) and p.isidentifier() else str(p) if isinstance(p, int) else repr(p)
                       for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Config reference')"
        parts.append(f"{loc}: {msg}" if loc else msg)  # cross-section rules name their fields themselves
    return f"{origin}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.batch_size=512' → (['train', 'batch_size'], 512); the value is parsed as YAML."""
    if "=" not in text:
        raise RecallError(f"--set {text!r}: expected key.path=value, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecallError(f"--set {text!r}: empty key; expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecallError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def config_from_dict(raw: Any, origin: str = "config") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecallError(f"{origin}: the top level must be a mapping of sections (data:, model:, …)")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise RecallError(_format_errors(e, origin)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when `path` is None) and apply `--set` overrides."""
    raw: Any = {}
    origin = "config"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise RecallError(f"{p}: config file not found; pass the path of a YAML file, e.g. configs/quickstart.yaml")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:  # e.g. a data file passed where the config goes
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise RecallError(f"{p}: cannot read it as a YAML config ({reason}); pass a .yaml file, "
                              "e.g. configs/quickstart.yaml") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise RecallError(f"{p}:{where} is not valid YAML; fix the syntax") from None
        if raw is None:  # an empty file (or only comments): most likely not the file meant
            raise RecallError(f"{p}: the config file is empty; write the settings in it (start from "
                              "configs/quickstart.yaml), or `{}` to train the built-in data with every default")
        if not isinstance(raw, dict):
            raise RecallError(f"{p}: the top level must be a mapping of sections (data:, model:, …)")
    for text in overrides or []:
        path_, value = parse_override(text)
        apply_override(raw, path_, value)
    cfg = config_from_dict(raw, origin)
    if cfg.run_dir is None and path is not None:
        cfg.run_dir = str(Path("runs") / Path(path).stem)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
