"""Config loading: shipped YAMLs load, typos/types/values are refused with dotted paths, --set works."""

from __future__ import annotations

from pathlib import Path

import pytest

from recall.config import (
    Config,
    apply_override,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
)
from recall.errors import RecallError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path=None, overrides=None) -> str:
    with pytest.raises(RecallError) as info:
        load_config(path, overrides)
    return str(info.value)


# --- shipped configs -------------------------------------------------------------------------------


def test_configs_are_shipped():
    assert SHIPPED, f"no configs/*.yaml under {ROOT}"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.run_dir == str(Path("runs") / path.stem)


# --- unknown keys, wrong types, bad values -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, dotted",
    [
        ("train:\n  num_sampeld: 5\n", "train.num_sampeld"),
        ("model:\n  dimm: 32\n", "model.dimm"),
        ("loss:\n  num_sampeld: 5\n", "loss.num_sampeld"),
        ("data:\n  columns:\n    itme: movieId\n", "data.columns.itme"),
        ("trian:\n  epochs: 1\n", "trian"),
    ],
)
def test_typo_key_names_dotted_path_and_unknown_key(tmp_path, text, dotted):
    path = write(tmp_path, text)
    msg = error_of(path)
    assert f"{dotted}: unknown key" in msg
    assert str(path) in msg


@pytest.mark.parametrize(
    "text, dotted",
    [
        ('train:\n  batch_size: "abc"\n', "train.batch_size"),
        ("train:\n  batch_size: 0\n", "train.batch_size"),
        ("train:\n  learning_rate: -1\n", "train.learning_rate"),
        ("loss:\n  sampler: bogus\n", "loss.sampler"),
        ("loss:\n  num_sampled: 0\n", "loss.num_sampled"),
        ("model:\n  dim: [1, 2]\n", "model.dim"),
        ("model:\n  dropout: 1.5\n", "model.dropout"),
        ("data:\n  source: ftp\n", "data.source"),
        ("train:\n  early_stopping: {metric: 'auc'}\n", "train.early_stopping.metric"),
        ("eval:\n  ks: [0, 10]\n", "eval"),
    ],
)
def test_wrong_type_or_value_names_dotted_path(tmp_path, text, dotted):
    msg = error_of(write(tmp_path, text))
    assert f"{dotted}:" in msg


def test_cross_field_rule_file_source_needs_path(tmp_path):
    msg = error_of(write(tmp_path, "data:\n  source: file\n"))
    assert "data.path" in msg


def test_several_errors_are_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        "train:\n  batch_size: 0\n  learning_rate: -1\n  num_sampeld: 3\nmodel:\n  dimm: 4\nloss:\n  sampler: bogus\n",
    )
    msg = error_of(path)
    for dotted in ("train.batch_size", "train.learning_rate", "train.num_sampeld", "model.dimm", "loss.sampler"):
        assert f"{dotted}:" in msg, (dotted, msg)
    assert "\n" not in msg  # one line, for the CLI


def test_top_level_must_be_a_mapping(tmp_path):
    msg = error_of(write(tmp_path, "- 1\n- 2\n"))
    assert "mapping" in msg and "exp.yaml" in msg


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing yet\n"])
def test_an_empty_file_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    msg = error_of(path)
    assert msg == (f"{path}: the config file is empty; write the settings in it (start from "
                   "configs/quickstart.yaml), or `{}` to train the built-in data with every default")
    assert error_of(path, ["train.epochs=1"]) == msg  # overrides do not make it a config


def test_an_explicit_empty_mapping_means_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "{}\n"))
    assert cfg.to_dict() == Config(run_dir=cfg.run_dir).to_dict()


# --- --set overrides --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, value",
    [
        ("train.batch_size=512", ["train", "batch_size"], 512),
        ("train.learning_rate=0.01", ["train", "learning_rate"], 0.01),
        ("model.hidden=[64, 32]", ["model", "hidden"], [64, 32]),
        ("model.item_bias=false", ["model", "item_bias"], False),
        ("train.max_examples_per_user=null", ["train", "max_examples_per_user"], None),
        ("data.path=a=b.csv", ["data", "path"], "a=b.csv"),
        ("data.delimiter=;", ["data", "delimiter"], ";"),
        ("train.early_stopping={metric: ndcg@10, patience: 4}", ["train", "early_stopping"],
         {"metric": "ndcg@10", "patience": 4}),
    ],
)
def test_parse_override_reads_yaml_values(text, path, value):
    assert parse_override(text) == (path, value)


def test_override_exponent_float_validates():
    # PyYAML (YAML 1.1) reads "1e-2" as a string; pydantic still turns it into the float.
    assert load_config(None, ["train.learning_rate=1e-2"]).train.learning_rate == pytest.approx(0.01)


def test_overrides_apply_over_the_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 10\n  batch_size: 64\nmodel:\n  hidden: [8]\n")
    cfg = load_config(path, ["train.epochs=2", "model.hidden=[16, 4]", "loss.sampler=uniform"])
    assert cfg.train.epochs == 2
    assert cfg.train.batch_size == 64  # untouched sibling
    assert cfg.model.hidden == [16, 4]
    assert cfg.loss.sampler == "uniform"


def test_later_override_wins():
    assert load_config(None, ["train.epochs=2", "train.epochs=7"]).train.epochs == 7


def test_override_creates_nested_sections(tmp_path):
    cfg = load_config(
        write(tmp_path, "seed: 1\n"),
        ["data.source=file", "data.path=x.csv", "data.columns.item=movieId", "data.user_features.path=u.csv"],
    )
    assert cfg.data.path == "x.csv"
    assert cfg.data.columns.item == "movieId"
    assert cfg.data.columns.user == "user_id"
    assert cfg.data.user_features is not None and cfg.data.user_features.path == "u.csv"


def test_override_into_a_null_section_creates_it(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  early_stopping: null\n"), ["train.early_stopping.patience=5"])
    assert cfg.train.early_stopping is not None and cfg.train.early_stopping.patience == 5


def test_apply_override_on_plain_dict():
    raw: dict = {"train": {"epochs": 1}}
    apply_override(raw, ["train", "batch_size"], 8)
    apply_override(raw, ["model", "dim"], 4)
    assert raw == {"train": {"epochs": 1, "batch_size": 8}, "model": {"dim": 4}}


@pytest.mark.parametrize(
    "override, dotted",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.learning_rate=-1", "train.learning_rate"),
        ("loss.sampler=bogus", "loss.sampler"),
        ("train.num_sampeld=5", "train.num_sampeld"),
        ("model.dimm=5", "model.dimm"),
    ],
)
def test_overrides_are_validated_like_the_file(tmp_path, override, dotted):
    msg = error_of(write(tmp_path, "seed: 1\n"), [override])
    assert f"{dotted}:" in msg
    if "sampeld" in dotted or "dimm" in dotted:
        assert "unknown key" in msg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epochs", "expected key.path=value"),
        ("=5", "empty key"),
        ("...=5", "empty key"),
        ("seed.value=3", "'seed' is not a section"),
        ("train.epochs.max=3", "'epochs' is not a section"),
    ],
)
def test_bad_override_is_a_recall_error(tmp_path, override, needle):
    msg = error_of(write(tmp_path, "seed: 1\ntrain:\n  epochs: 2\n"), [override])
    assert needle in msg


def test_override_into_a_scalar_set_by_an_earlier_override():
    msg = error_of(None, ["data=5", "data.path=x.csv"])
    assert "not a section" in msg


def test_overrides_without_a_file_start_from_defaults():
    cfg = load_config(None, ["model.dim=8"])
    assert cfg.model.dim == 8
    assert cfg.run_dir is None


# --- files ------------------------------------------------------------------------------------------


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = error_of(missing)
    assert str(missing) in msg and "not found" in msg


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 2\n  batch_size: [1, 2\nmodel: {dim: 3\n")
    msg = error_of(path)
    assert str(path) in msg and "not valid YAML" in msg and "line" in msg


def test_binary_file_as_config_is_a_recall_error(tmp_path):
    path = tmp_path / "ratings.parquet"
    path.write_bytes(b"PAR1\x15\x04\x15\xff\xfe\x00\x80\x81\x82PAR1")
    msg = error_of(path)
    assert str(path) in msg


def test_run_dir_defaults_to_runs_stem(tmp_path):
    assert load_config(write(tmp_path, "seed: 3\n", "my-exp.yaml")).run_dir == str(Path("runs") / "my-exp")


def test_explicit_run_dir_is_kept(tmp_path):
    path = write(tmp_path, "run_dir: elsewhere/r1\n")
    assert load_config(path).run_dir == "elsewhere/r1"
    assert load_config(path, ["run_dir=r2"]).run_dir == "r2"


def test_dump_config_round_trips(tmp_path):
    src = ROOT / "configs" / "quickstart.yaml"
    cfg = load_config(src, ["model.hidden=[32, 16]", "loss.sampler=unigram", "loss.distortion=0.75",
                            "eval.ks=[50, 10, 10]"])
    assert cfg.eval.ks == [10, 50]  # sorted, deduplicated
    again = load_config(write(tmp_path, dump_config(cfg), "dumped.yaml"))
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert again.to_dict() == cfg.to_dict()


def test_config_from_dict_refuses_non_mapping():
    with pytest.raises(RecallError, match="mapping"):
        config_from_dict([1, 2], "x.yaml")


def test_hash_changes_with_content():
    assert Config().hash() != load_config(None, ["seed=7"]).hash()
    assert Config().hash() == Config().hash()


# --- loss.remove_accidental_hits: auto by loss kind ----------------------------------------------------


@pytest.mark.parametrize("overrides, expected", [
    ([], True),  # sampled_softmax
    (["loss.kind=full_softmax"], True),
    (["loss.kind=nce"], False),  # TF's nce_loss default
    (["loss.kind=neg"], False),
    (["loss.kind=nce", "loss.sampler=in_batch"], True),  # in_batch needs the row's own column removed
    (["loss.kind=neg", "loss.sampler=mixed"], True),
    (["loss.kind=nce", "loss.remove_accidental_hits=null"], False),  # null = auto
    (["loss.kind=nce", "loss.remove_accidental_hits=true"], True),  # an explicit value wins
    (["loss.remove_accidental_hits=false"], False),
])
def test_remove_accidental_hits_auto_default(overrides, expected):
    cfg = load_config(None, overrides)
    assert cfg.loss.remove_accidental_hits is expected
    assert dump_config(cfg).count(f"remove_accidental_hits: {str(expected).lower()}") == 1  # saved resolved


def test_remove_accidental_hits_auto_follows_a_later_kind_and_keeps_the_default_hash():
    cfg = Config()
    before = cfg.hash()
    cfg.loss.kind = "nce"  # validate_assignment re-resolves an unset value
    assert cfg.loss.remove_accidental_hits is False
    cfg.loss.kind = "sampled_softmax"
    assert cfg.loss.remove_accidental_hits is True and cfg.hash() == before
    explicit = load_config(None, ["loss.remove_accidental_hits=true"])
    explicit.loss.kind = "nce"
    assert explicit.loss.remove_accidental_hits is True
    # A run saved before the auto default (explicit `true`) still equals today's default loss section.
    assert load_config(None, ["loss.remove_accidental_hits=true"]).loss == Config().loss


@pytest.mark.parametrize("kind", ["sampled_softmax", "nce"])
@pytest.mark.parametrize("sampler", ["in_batch", "mixed"])
def test_in_batch_refuses_keeping_accidental_hits(kind, sampler):
    with pytest.raises(RecallError, match="remove_accidental_hits must be true"):
        load_config(None, [f"loss.kind={kind}", f"loss.sampler={sampler}", "loss.remove_accidental_hits=false"])


# --- model.history (the encoders), train.batching and train.lr_schedule -------------------------------


def test_defaults():
    cfg = Config()  # the cross-dataset recipe (benchmarks/recipes.py), = configs/quickstart.yaml's sections
    assert [(e.kind, e.window) for e in cfg.model.history] == [("mean", None), ("recent", 5), ("gru", 20)]
    assert (cfg.model.hidden, cfg.model.tie_embeddings, cfg.model.dropout, cfg.model.compute_dtype) == (
        [512], True, 0.3, "auto")
    assert (cfg.loss.kind, cfg.loss.sampler, cfg.loss.num_sampled) == ("sampled_softmax", "log_uniform", 300)
    t = cfg.train
    assert (t.epochs, t.batch_size, t.batching, t.sequence_length, t.learning_rate, t.lr_schedule, t.warmup_steps,
            t.early_stopping.patience) == (12, 512, "sequences", 8, 0.002, "cosine", 0, 3)
    quickstart = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    for section in ("model", "loss"):
        assert getattr(quickstart, section) == getattr(cfg, section)
    execution = {"batch_splits", "intra_op_threads"}  # the 2-core speed settings the quickstart adds
    assert quickstart.train.model_dump(exclude=execution) == cfg.train.model_dump(exclude=execution)


def test_the_default_history_fits_a_shorter_max_history():
    cfg = load_config(None, ["model.max_history=10"])
    assert [(e.kind, e.window) for e in cfg.model.history] == [("mean", None), ("recent", 5), ("gru", 10)]
    assert "reads the latest 20 items" in error_of(None, ["model.max_history=10",
                                                          "model.history=[{kind: gru, window: 20}]"])


def test_history_is_a_list_of_encoders_with_their_own_fields():
    cfg = load_config(None, ["model.history=[{kind: mean}, {kind: recent, window: 5}, {kind: gru, window: 20}, "
                             "{kind: transformer, band: 8, blocks: 3, heads: 2, dropout: 0.1}, "
                             "{kind: min_gru, window: 10, heads: 8}]"])
    kinds = [(e.kind, e.reads(cfg.model.max_history)) for e in cfg.model.history]
    assert kinds == [("mean", 50), ("recent", 5), ("gru", 20), ("transformer", 22), ("min_gru", 10)]
    assert cfg.model.history[3].blocks == 3 and cfg.model.history[4].heads == 8


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.history=[{kind: gruu}]", "model.history.0"),
        ("model.history=[{kind: gru, windw: 3}]", "model.history.0.gru.windw: unknown key"),
        ("model.history=[{kind: gru, window: 0}]", "model.history.0.gru.window"),
        ("model.history=[{kind: transformer, blocks: 0}]", "model.history.0.transformer.blocks"),
        ("model.history=[{kind: transformer, dropout: 1.0}]", "model.history.0.transformer.dropout"),
        ("model.history=[]", "model.history"),
        ("train.lr_schedule=linear", "train.lr_schedule:"),
        ("train.warmup_steps=-5", "train.warmup_steps:"),
        ("train.batching=chunks", "train.batching:"),
    ],
)
def test_encoder_and_schedule_fields_are_validated(override, needle):
    msg = error_of(None, [override])
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("old, replacement", [("model.gru=20", "{kind: gru"), ("model.recent=5", "{kind: recent"),
                                              ("model.transformer=20", "{kind: transformer"),
                                              ("model.min_gru_heads=4", "heads: H")])
def test_replaced_model_keys_name_their_replacement(old, replacement):
    msg = error_of(None, [old])
    assert f"{old.split('=')[0]} was replaced by an entry of model.history" in msg and replacement in msg


def test_an_encoder_cannot_read_past_the_history():
    msg = error_of(None, ["model.max_history=10", "model.history=[{kind: mean}, {kind: transformer, band: 8}]"])
    assert "model.history.1 (transformer) reads the latest 15 items, more than model.max_history (10)" in msg


def test_encoder_heads_must_divide_dim():
    msg = error_of(None, ["model.dim=64", "model.history=[{kind: transformer, heads: 3}]"])
    assert "model.history.0.heads (3)" in msg and "model.dim" in msg
    assert "model.history.0.heads (3)" in error_of(None, ["model.history=[{kind: min_gru, heads: 3}]"])
    assert load_config(None, ["model.history=[{kind: min_gru}]"]).model.history[0].heads is None  # per unit


def test_warmup_needs_the_cosine_schedule():
    msg = error_of(None, ["train.warmup_steps=100", "train.lr_schedule=constant"])
    assert "train.warmup_steps (100) needs train.lr_schedule=cosine" in msg
    cfg = load_config(None, ["train.warmup_steps=100", "train.lr_schedule=cosine"])
    assert cfg.train.warmup_steps == 100


def test_sequence_batches_are_whole_chunks():
    assert "multiple of train.sequence_length (64)" in error_of(None, ["train.batching=sequences",
                                                                       "train.sequence_length=64",
                                                                       "train.batch_size=100"])
    assert "cannot exceed the chunks per batch (2" in error_of(None, [
        "train.batching=sequences", "train.sequence_length=64", "train.batch_size=128", "train.batch_splits=3"])
    cfg = load_config(None, ["train.batching=sequences", "train.batch_size=512", "train.sequence_length=32"])
    assert (cfg.train.batching, cfg.train.batch_size // cfg.train.sequence_length) == ("sequences", 16)
    assert load_config(None, ["train.batching=positions", "train.batch_size=100"]).train.batch_size == 100  # no
    # constraint there


def test_batch_splits_cannot_exceed_the_batch(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 4\n  batching: positions\n")
    assert "train.batch_splits (5)" in error_of(path, ["train.batch_splits=5"])
    assert load_config(path, ["train.batch_splits=4"]).train.batch_splits == 4


def test_compute_dtype_names_the_choices(tmp_path):
    path = write(tmp_path, "{}")
    assert load_config(path, ["model.compute_dtype=bfloat16"]).model.compute_dtype == "bfloat16"
    assert load_config(path, ["model.compute_dtype=auto"]).model.compute_dtype == "auto"
    assert load_config(path).model.compute_dtype == "auto"  # the default
    assert load_config(path, ["model.compute_dtype=float32"]).model.compute_dtype == "float32"
    message = error_of(path, ["model.compute_dtype=float16"])
    assert "model.compute_dtype" in message and "bfloat16" in message
