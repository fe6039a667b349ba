"""The bad-input table: every way a user can get the input wrong, each fed through the CLI.

Every case must give (1) exit code 2, (2) exactly one `error:` line on stderr naming the field or
file, (3) no traceback, and (4) no partial output: the directory the command would write (the run
directory, the export bundle, the folder passed in) is byte-for-byte what it was before.

Cases are small functions registered with `@case(name)`; each builds its input under `tmp_path`
and returns the argv, the strings the error line must contain, and the directory to watch.
Export-bundle cases copy one tiny trained bundle (module fixture: 50 users × 30 items, 1 epoch).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pre_recipe import PRE_RECIPE

from recall.cli import main
from recall.config import dump_config, load_config
from recall.io import sha256_file

faiss = pytest.importorskip("faiss")


# --- inputs shared by the cases -------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """20 users × 10 items (8 interactions each) in every good and broken variant the cases need."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 1000 + t, 4.0) for u in range(20) for t, i in enumerate(rng.choice(10, 8, replace=False))]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    out = {name: d / name for name in (
        "ratings.csv", "ratings.parquet", "semicolon.csv", "noitem.csv", "norating.csv", "empty.csv",
        "header_only.csv", "nan_users.parquet", "null_item.csv", "bad_time.csv", "two_each.csv",
        "corrupt.parquet", "users.csv", "users_unknown.csv", "ratings.xlsx", "one_item.csv")}
    df.to_csv(out["ratings.csv"], index=False)
    df.to_parquet(out["ratings.parquet"])
    df.to_csv(out["semicolon.csv"], index=False, sep=";")
    df.drop(columns="item_id").to_csv(out["noitem.csv"], index=False)
    df.drop(columns="rating").to_csv(out["norating.csv"], index=False)
    out["empty.csv"].write_text("")
    out["header_only.csv"].write_text("user_id,item_id,timestamp\n")
    nan_users = df.astype({"user_id": "float64"})
    nan_users.loc[[3, 40], "user_id"] = np.nan
    nan_users.to_parquet(out["nan_users.parquet"])
    null_item = df.astype({"item_id": object})
    null_item.loc[5, "item_id"] = None
    null_item.to_csv(out["null_item.csv"], index=False)
    bad_time = df.astype({"timestamp": object})
    bad_time.loc[7, "timestamp"] = "yesterday"
    bad_time.to_csv(out["bad_time.csv"], index=False)
    df.groupby("user_id").head(2).to_csv(out["two_each.csv"], index=False)  # every user has 2 < 3
    out["corrupt.parquet"].write_bytes(b"PAR1 this is not parquet PAR1")
    users = pd.DataFrame({"user_id": range(20), "gender": ["F", "M"] * 10})
    users.to_csv(out["users.csv"], index=False)
    users.assign(user_id=[f"u{i}" for i in range(20)]).to_csv(out["users_unknown.csv"], index=False)
    out["ratings.xlsx"].write_bytes(b"PK\x03\x04 not a spreadsheet")
    df.assign(item_id=7).drop_duplicates(["user_id", "timestamp"]).to_csv(out["one_item.csv"], index=False)
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """One tiny trained export bundle (50 users × 30 items, dim 8, 1 epoch): a few seconds on CPU."""
    pytest.importorskip("tensorflow")
    import recall
    from recall.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("bundle")
    log = root / "log.parquet"
    synthesize(num_users=50, num_items=30, interactions_per_user=8, num_topics=3, seed=1).to_parquet(log)
    cfg = recall.load_config(None, [
        "data.source=file", f"data.path={log}", "model.dim=8", "model.hidden=[8]", "model.max_history=5",
        "model.history=[{kind: mean}]", *PRE_RECIPE,
        "loss.num_sampled=5", "train.epochs=1", "train.batch_size=64", "eval.ks=[5,10]",
        "train.early_stopping.metric=hr@10"])
    recall.train(cfg, root / "run")
    return root / "run" / "export"


@dataclass
class Env:
    """What a case builds on: its own tmp folder, the shared data files, and (lazily) a bundle copy."""

    tmp: Path
    files: dict[str, Path]
    request: pytest.FixtureRequest
    watched: Path | None = None

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def config(self, text: str, name: str = "exp.yaml") -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def file_config(self, data: str, extra: str = "") -> Path:
        return self.config(f"data:\n  source: file\n  path: {self.files[data]}\n{extra}")

    def train(self, config: Path, *sets: str) -> list[str]:
        self.watched = self.run
        return ["train", str(config), *(a for s in sets for a in ("--set", s)), "--run-dir", str(self.run)]

    def export_copy(self) -> Path:
        """A private copy of the trained bundle, watched for changes."""
        dst = self.tmp / "export"
        shutil.copytree(self.request.getfixturevalue("bundle"), dst)
        self.watched = dst
        return dst

    def query(self, export: Path, *extra: str, history: str = "1,2,3") -> list[str]:
        return ["query", str(export), "--history", history, *extra]


def edit_manifest(export: Path, **changes) -> None:
    path = export / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del manifest[key]
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def reseal(export: Path, name: str) -> None:
    """Record `name`'s new sha256 in the manifest, so only the check under test can trip."""
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(export / name)
    (export / "manifest.json").write_text(json.dumps(manifest))


_DELETE = object()
Spec = tuple[list[str], tuple[str, ...]]
CASES: dict[str, Callable[[Env], Spec]] = {}


def case(name: str):
    def register(fn: Callable[[Env], Spec]) -> Callable[[Env], Spec]:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


# --- configs --------------------------------------------------------------------------------------


@case("config file missing")
def _(e: Env) -> Spec:
    return e.train(e.tmp / "nope.yaml"), ("nope.yaml", "not found")


@case("config is not valid YAML")
def _(e: Env) -> Spec:
    cfg = e.config("train: {epochs: 2\n")
    return e.train(cfg), (str(cfg), "YAML")


@case("config is a data file")
def _(e: Env) -> Spec:
    return e.train(e.files["ratings.parquet"]), (str(e.files["ratings.parquet"]),)


@case("config file is empty")
def _(e: Env) -> Spec:
    cfg = e.config("# TODO\n")
    return e.train(cfg), (str(cfg), "empty", "configs/quickstart.yaml")


@case("config top level is a list")
def _(e: Env) -> Spec:
    cfg = e.config("- data\n- model\n")
    return e.train(cfg), (str(cfg), "mapping")


@case("unknown key (typo) in the file")
def _(e: Env) -> Spec:
    cfg = e.file_config("ratings.csv", "train:\n  num_sampeld: 5\n")
    return e.train(cfg), (str(cfg), "train.num_sampeld", "unknown key")


@case("unknown key via --set")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "model.dimm=3"), ("model.dimm", "unknown key")


@case("unknown section")
def _(e: Env) -> Spec:
    return e.train(e.config("trian:\n  epochs: 2\n")), ("trian", "unknown key")


@case("wrong type: batch size is text")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "train.batch_size=abc"), ("train.batch_size",)


@case("wrong type: section given a scalar")
def _(e: Env) -> Spec:
    return e.train(e.config("model: 64\n")), ("model",)


@case("batch size 0")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "train.batch_size=0"), ("train.batch_size", "greater than or equal to 1")


@case("negative learning rate")
def _(e: Env) -> Spec:
    cfg = e.file_config("ratings.csv", "train:\n  learning_rate: -0.01\n")
    return e.train(cfg), (str(cfg), "train.learning_rate", "greater than 0")


@case("huge int for model.dim")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "model.dim=99999999999999999999999"), ("model.dim",)


@case("unknown sampler name")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "loss.sampler=bogus"), ("loss.sampler",)


@case("--set without '='")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "train.epochs"), ("--set", "train.epochs")


@case("--set into a scalar")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "seed.x=1"), ("seed",)


@case("cross-field: a history encoder's window > model.max_history")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "model.history=[{kind: recent, window: 9}]", "model.max_history=5"), \
        ("model.history.0", "model.max_history")


@case("sequence batching: a batch that is not whole chunks")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("ratings.csv"), "train.batching=sequences", "train.batch_size=10",
                   "train.sequence_length=4")
    return argv, ("train.batch_size (10)", "train.sequence_length (4)")


@case("a replaced model key (model.gru)")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "model.gru=20"), ("model.gru", "model.history", "kind: gru")


@case("an unknown history encoder")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "model.history=[{kind: lstm}]"), ("model.history.0", "'lstm'")


@case("a weight column the file does not have")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "data.columns.weight=watch_time"), \
        ("ratings.csv", "'watch_time'", "data.columns.weight")


@case("cross-field: in_batch keeping accidental hits")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("ratings.csv"), "loss.sampler=in_batch", "loss.remove_accidental_hits=false")
    return argv, ("loss.remove_accidental_hits",)


@case("cross-field: deterministic run with the learned_unigram sampler")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("ratings.csv"), "train.deterministic=true", "loss.sampler=learned_unigram")
    return argv, ("train.deterministic", "learned_unigram")


@case("steps_per_execution 0")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "train.steps_per_execution=0"), ("train.steps_per_execution",)


@case("early-stopping metric not in eval.ks")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "eval.ks=[5]"), ("train.early_stopping.metric", "eval.ks")


@case("eval.ks holds a K <= 0")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv"), "eval.ks=[0,10]"), ("eval.ks",)


@case("eval.ks K larger than the catalogue")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("ratings.csv"), "eval.ks=[5,50]", "loss.num_sampled=5")
    return argv, ("eval.ks", "K=50", "10 train items")


@case("num_sampled >= catalogue")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.parquet", "loss:\n  num_sampled: 10\n")), ("loss.num_sampled=10", "10 items")


@case("invalid faiss factory")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("ratings.csv"), "eval.ks=[5]", "train.early_stopping=null", "loss.num_sampled=5",
                   "index.factory=XYZ")
    return argv, ("index.factory", "'XYZ'")


@case("IVF with more lists than items")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("ratings.csv"), "eval.ks=[5]", "train.early_stopping=null", "loss.num_sampled=5",
                   "index.factory=IVF64,Flat")
    return argv, ("index.factory", "64")


@case("run dir of a different experiment")
def _(e: Env) -> Spec:
    cfg = e.file_config("ratings.csv")
    e.run.mkdir()
    (e.run / "config.yaml").write_text(dump_config(load_config(cfg, ["model.dim=8"])))
    return e.train(cfg), (str(e.run), "model.dim=8, not 64")


# --- data files -----------------------------------------------------------------------------------


@case("data.source file without data.path")
def _(e: Env) -> Spec:
    return e.train(e.config("data:\n  source: file\n")), ("data.path",)


@case("data file missing")
def _(e: Env) -> Spec:
    missing = e.tmp / "missing.csv"
    return e.train(e.config(f"data:\n  source: file\n  path: {missing}\n")), (str(missing), "data.path")


@case("data file with an unknown suffix")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.xlsx")), (str(e.files["ratings.xlsx"]), "data.format")


@case("corrupt parquet")
def _(e: Env) -> Spec:
    return e.train(e.file_config("corrupt.parquet")), (str(e.files["corrupt.parquet"]), "Parquet")


@case("empty CSV file")
def _(e: Env) -> Spec:
    return e.train(e.file_config("empty.csv")), (str(e.files["empty.csv"]), "empty")


@case("CSV with a header and no rows")
def _(e: Env) -> Spec:
    return e.train(e.file_config("header_only.csv")), (str(e.files["header_only.csv"]), "no interactions")


@case("item column missing")
def _(e: Env) -> Spec:
    return e.train(e.file_config("noitem.csv")), (str(e.files["noitem.csv"]), "data.columns.item")


@case("configured column absent")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("ratings.parquet", "  columns:\n    item: product\n"))
    return argv, ("'product'", "data.columns.item")


@case("CSV delimiter differs from the config")
def _(e: Env) -> Spec:
    argv = e.train(e.file_config("semicolon.csv", "  delimiter: ','\n"))
    return argv, (str(e.files["semicolon.csv"]), "data.delimiter", "';'")


@case("NaN user ids")
def _(e: Env) -> Spec:
    return e.train(e.file_config("nan_users.parquet")), (str(e.files["nan_users.parquet"]), "2 rows have no user id")


@case("null item id")
def _(e: Env) -> Spec:
    return e.train(e.file_config("null_item.csv")), (str(e.files["null_item.csv"]), "1 row has no item id")


@case("non-numeric timestamps")
def _(e: Env) -> Spec:
    return e.train(e.file_config("bad_time.csv")), (str(e.files["bad_time.csv"]), "'timestamp'", "yesterday")


@case("min_rating without a rating column")
def _(e: Env) -> Spec:
    return e.train(e.file_config("norating.csv", "  min_rating: 4\n")), (str(e.files["norating.csv"]), "min_rating")


@case("min_rating drops every row")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv", "  min_rating: 4.5\n")), ("min_rating",)


@case("every user has fewer than 3 interactions")
def _(e: Env) -> Spec:
    return e.train(e.file_config("two_each.csv")), ("data:", "at least 3 interactions")


@case("a single item in train")
def _(e: Env) -> Spec:
    return e.train(e.file_config("one_item.csv")), ("data:", "2 distinct items")


@case("no training examples (min_history too high)")
def _(e: Env) -> Spec:
    return e.train(e.file_config("ratings.csv", "train:\n  min_history: 50\n")), ("train.min_history",)


@case("user-feature file missing")
def _(e: Env) -> Spec:
    missing = e.tmp / "users.parquet"
    argv = e.train(e.file_config("ratings.csv", f"  user_features:\n    path: {missing}\n    columns: [gender]\n"))
    return argv, (str(missing), "data.user_features.path")


@case("user-feature column missing")
def _(e: Env) -> Spec:
    users = e.files["users.csv"]
    argv = e.train(e.file_config("ratings.csv", f"  user_features:\n    path: {users}\n    columns: [age]\n"))
    return argv, (str(users), "'age'", "data.user_features.columns")


@case("user-feature table knows none of the users")
def _(e: Env) -> Spec:
    users = e.files["users_unknown.csv"]
    argv = e.train(e.file_config("ratings.csv", f"  user_features:\n    path: {users}\n    columns: [gender]\n"))
    return argv, (str(users), "none of the 20 users", "[0]", "['u0']", "data.user_features.key")


# --- command-line arguments -----------------------------------------------------------------------


@case("unknown command")
def _(e: Env) -> Spec:
    return ["frobnicate"], ("frobnicate",)


@case("train without a config")
def _(e: Env) -> Spec:
    return ["train"], ("config",)


@case("query without --history")
def _(e: Env) -> Spec:
    return ["query", str(e.tmp)], ("--history",)


@case("query -k is not a number")
def _(e: Env) -> Spec:
    return ["query", str(e.tmp), "--history", "1", "-k", "ten"], ("-k",)


@case("synth output with an unknown suffix")
def _(e: Env) -> Spec:
    e.watched = e.tmp / "out"
    e.watched.mkdir()
    return ["data", "synth", "--out", str(e.watched / "log.xlsx"), "--users", "20", "--items", "10"], ("log.xlsx",)


@case("evaluate a folder that is not a run")
def _(e: Env) -> Spec:
    e.watched = e.tmp / "not_a_run"
    e.watched.mkdir()
    return ["evaluate", str(e.watched)], (str(e.watched), "not a run directory")


@case("export a folder that is not a run")
def _(e: Env) -> Spec:
    e.watched = e.tmp / "not_a_run"
    e.watched.mkdir()
    return ["export", str(e.watched), "--out", str(e.watched / "export")], (str(e.watched), "not a run directory")


# --- export bundles -------------------------------------------------------------------------------


@case("query a folder without a manifest")
def _(e: Env) -> Spec:
    e.watched = e.tmp / "no_bundle"
    e.watched.mkdir()
    return e.query(e.watched), (str(e.watched / "manifest.json"),)


@case("manifest.json is not JSON")
def _(e: Env) -> Spec:
    export = e.export_copy()
    (export / "manifest.json").write_text('{"format": "recall-export", "files": {')
    return e.query(export), (str(export / "manifest.json"), "not valid JSON")


@case("manifest of another format version")
def _(e: Env) -> Spec:
    export = e.export_copy()
    edit_manifest(export, format_version=99)
    return e.query(export), (str(export / "manifest.json"), "format_version")


@case("manifest without index_dim")
def _(e: Env) -> Spec:
    export = e.export_copy()
    edit_manifest(export, index_dim=_DELETE)
    return e.query(export), (str(export / "manifest.json"), "'index_dim'")


@case("manifest lists a file outside the bundle")
def _(e: Env) -> Spec:
    export = e.export_copy()
    manifest = json.loads((export / "manifest.json").read_text())
    edit_manifest(export, files={**manifest["files"], "../../outside.txt": "0" * 64})
    return e.query(export), (str(export / "manifest.json"), "'../../outside.txt'", "outside the bundle")


@case("bundle file listed but missing")
def _(e: Env) -> Spec:
    export = e.export_copy()
    (export / "item_vectors.npy").unlink()
    return e.query(export), (str(export / "item_vectors.npy"), "missing")


@case("truncated item_ids.npy")
def _(e: Env) -> Spec:
    export = e.export_copy()
    data = (export / "item_ids.npy").read_bytes()
    (export / "item_ids.npy").write_bytes(data[: len(data) // 2])
    return e.query(export), (str(export / "item_ids.npy"), "sha256")


@case("truncated item_ids.npy with a matching sha")
def _(e: Env) -> Spec:
    export = e.export_copy()
    data = (export / "item_ids.npy").read_bytes()
    (export / "item_ids.npy").write_bytes(data[: len(data) // 2])
    reseal(export, "item_ids.npy")
    return e.query(export), (str(export / "item_ids.npy"), "not a plain .npy array")


@case("pickled item_ids.npy with a matching sha")
def _(e: Env) -> Spec:
    export = e.export_copy()
    ids = np.load(export / "item_ids.npy", allow_pickle=False)
    np.save(export / "item_ids.npy", np.array([int(i) for i in ids], dtype=object), allow_pickle=True)
    reseal(export, "item_ids.npy")
    return e.query(export), (str(export / "item_ids.npy"), "allow_pickle=False")


@case("item_ids.npy of the wrong dtype")
def _(e: Env) -> Spec:
    export = e.export_copy()
    np.save(export / "item_ids.npy", np.load(export / "item_ids.npy").astype(np.float64))
    reseal(export, "item_ids.npy")
    return e.query(export), (str(export / "item_ids.npy"), "float64")


@case("tampered items.faiss")
def _(e: Env) -> Spec:
    export = e.export_copy()
    with open(export / "items.faiss", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
    return e.query(export), (str(export / "items.faiss"), "sha256")


@case("truncated items.faiss with a matching sha")
def _(e: Env) -> Spec:
    export = e.export_copy()
    (export / "items.faiss").write_bytes((export / "items.faiss").read_bytes()[:100])
    reseal(export, "items.faiss")
    return e.query(export), (str(export / "items.faiss"), "not a readable faiss index")


def _other_dim_index(export: Path, dim: int) -> None:
    """Replace items.faiss by a valid index of another dimension over as many items, and reseal it."""
    n = json.loads((export / "manifest.json").read_text())["num_items"]
    index = faiss.IndexFlatIP(dim)
    index.add(np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32))
    faiss.write_index(index, str(export / "items.faiss"))
    reseal(export, "items.faiss")


@case("items.faiss dimension differs from the manifest")
def _(e: Env) -> Spec:
    export = e.export_copy()
    _other_dim_index(export, 5)
    return e.query(export), (str(export / "items.faiss"), "d=5", "d=9")


@case("items.faiss dimension differs from the user tower")
def _(e: Env) -> Spec:
    export = e.export_copy()
    _other_dim_index(export, 5)
    edit_manifest(export, index_dim=5)  # manifest agrees with the index: only the tower check can trip
    return e.query(export), (str(export / "items.faiss"), "5-d", "9-d queries")


@case("truncated SavedModel with a matching sha")
def _(e: Env) -> Spec:
    export = e.export_copy()
    pb = export / "user_tower" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:1000])
    reseal(export, "user_tower/saved_model.pb")
    return e.query(export), (str(export / "user_tower"), "SavedModel")


@case("query k larger than the catalogue")
def _(e: Env) -> Spec:
    return e.query(e.export_copy(), "-k", "1000"), ("k=1000", "30")


@case("query text ids for an int64 bundle")
def _(e: Env) -> Spec:
    return e.query(e.export_copy(), history="a,b"), ("history", "integers")


@case("query --feature the model does not have")
def _(e: Env) -> Spec:
    return e.query(e.export_copy(), "--feature", "gender=F"), ("--feature gender", "not a feature")


@case("similar: an item the model does not know")
def _(e: Env) -> Spec:
    export = e.export_copy()
    return ["similar", str(export), "--item", "999999"], ("item 999999", "not in the catalogue", str(export))


@case("similar: k past the catalogue less the item")
def _(e: Env) -> Spec:
    export = e.export_copy()
    return ["similar", str(export), "--item", str(np.load(export / "item_ids.npy")[0]), "-k", "30"], ("k=30", "29")


@case("similar: item_vectors.npy of another shape with a matching sha")
def _(e: Env) -> Spec:
    export = e.export_copy()
    np.save(export / "item_vectors.npy", np.zeros((3, 9), np.float32))
    reseal(export, "item_vectors.npy")
    return ["similar", str(export), "--item", "1"], (str(export / "item_vectors.npy"), "(3, 9)")


# --- the table ------------------------------------------------------------------------------------


def snapshot(path: Path | None) -> dict[str, str] | None:
    """Every file under `path` with its sha256 (None when `path` does not exist)."""
    if path is None or not path.exists():
        return None
    return {str(p.relative_to(path)): sha256_file(p) if p.is_file() else "dir" for p in sorted(path.rglob("*"))}


def test_the_table_is_big_enough():
    assert len(CASES) >= 30, len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, files, request, capsys):
    env = Env(tmp_path, files, request)
    argv, needles = CASES[name](env)
    before = snapshot(env.watched)
    capsys.readouterr()  # drop whatever building the case printed (e.g. the bundle's training)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(env.watched) == before, f"{env.watched} changed"


# --- warnings and notes (exit 0) ------------------------------------------------------------------


def test_query_unknown_ids_are_ignored_and_named_on_stderr(bundle, capsys):
    ids = np.load(bundle / "item_ids.npy")
    known = [str(i) for i in ids[:3]]
    code = main(["query", str(bundle), "--history", ",".join([known[0], "999999", known[1], "888888"]),
                 "-k", "5", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.strip().splitlines() == ["note: ignored 2 history item id(s) unknown to the model: 999999, 888888"]
    result = json.loads(out)
    assert len(result["items"]) == 5 and set(result["items"]).isdisjoint({int(known[0]), int(known[1])})
    # Same answer as the history without the unknown ids.
    main(["query", str(bundle), "--history", f"{known[0]},{known[1]}", "-k", "5", "--json"])
    again, err = capsys.readouterr()
    assert json.loads(again) == result and err == ""


def test_duplicate_rows_are_dropped_with_a_warning(tmp_path, caplog):
    from recall.data.readers import read_interactions

    df = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [5, 5, 6, 5], "timestamp": [10, 10, 11, 10]})
    df.to_csv(tmp_path / "dup.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="recall.data.readers"):
        out = read_interactions(tmp_path / "dup.csv")
    assert len(out) == 3
    assert f"{tmp_path / 'dup.csv'}: dropped 1 duplicate rows (same user, item and timestamp)" in caplog.text


def test_some_unknown_users_in_the_feature_table_warn(caplog):
    from recall.data.features import encode_user_features

    table = pd.DataFrame({"gender": ["F", "M"]}, index=pd.Index([1, 2], name="user_id"))
    with caplog.at_level(logging.WARNING, logger="recall.data.features"):
        feats = encode_user_features(table, np.array([1, 2, 3]), source="users.csv")
    assert feats.codes[:, 0].tolist() == [1, 2, 0]
    assert "users.csv: 1 of 3 users are not in the feature table" in caplog.text
