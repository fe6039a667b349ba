"""User features are served as trained: raw values in, the training transformation (prefix,
vocabulary, unknown → 0) inside the exported tower, recorded in the manifest, unknown values counted.

The model (tests/conftest.py `features_run`) is trained on ML-1M-shaped users (gender, age,
occupation, zip_code with prefix 2) whose tastes follow their features.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

from recall import cli  # noqa: E402
from recall.bundle import FEATURES_FILE, ServingTower  # noqa: E402
from recall.data.features import encode_user_features  # noqa: E402
from recall.data.readers import read_user_features  # noqa: E402
from recall.errors import RecallError  # noqa: E402
from recall.evaluation.model_eval import queries_for  # noqa: E402
from recall.pipeline import load_run  # noqa: E402
from recall.serving import Recommender  # noqa: E402

pytestmark = pytest.mark.slow

NAMES = ["gender", "age", "occupation", "zip_code"]


@pytest.fixture(scope="module")
def loaded(features_run):
    run_dir, _ = features_run
    cfg, data, user, items = load_run(run_dir)
    return cfg, data, user, items, Recommender.load(run_dir / "export")


def _code(data, name: str, value: str) -> int:
    """The trained code of an already-transformed value (1 + its position in the vocabulary)."""
    f = data.features.names.index(name)
    return int(np.flatnonzero(data.features.vocabs[f] == value)[0]) + 1


def _tower_query(user, data, history_rows: list[int], codes: list[int], max_history: int = 10) -> np.ndarray:
    """The in-process tower's query [1, d + 1] for internal ids and internal feature codes (bias folded)."""
    h = np.full((1, max_history), -1, np.int32)
    h[0, -len(history_rows):] = history_rows
    q = user({"history": tf.constant(h), "age": tf.zeros([1]),
              "user_features": tf.constant([codes], tf.int32)}, training=False).numpy()
    return np.concatenate([q, np.ones((1, 1), np.float32)], axis=1)


def test_manifest_records_every_transformation(features_run, loaded):
    run_dir, _ = features_run
    _, data, _, _, _ = loaded
    export = run_dir / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["bias_folded"] is True  # _tower_query folds it
    assert manifest["user_features"] == NAMES
    sizes = dict(zip(data.features.names, data.features.sizes, strict=True))
    assert manifest["user_feature_transforms"] == [
        {"name": n, "prefix": 2 if n == "zip_code" else None, "vocabulary_size": sizes[n], "unknown_code": 0}
        for n in NAMES]
    assert sizes["zip_code"] == 4  # the four regions, not ~300 full zip codes
    assert "prefix" in manifest["user_feature_encoding"] and FEATURES_FILE in manifest["user_feature_encoding"]
    assert manifest["signature"]["inputs"] == ["history", "user_features"]
    assert manifest["signature"]["outputs"] == ["query", "unknown_features"]
    vocab = json.loads((export / FEATURES_FILE).read_text())["features"]
    assert FEATURES_FILE in manifest["files"]  # hashed like every other file
    assert [f["name"] for f in vocab] == NAMES
    zip_entry = vocab[NAMES.index("zip_code")]
    assert zip_entry["prefix"] == 2 and sorted(zip_entry["vocabulary"]) == ["02", "48", "55", "70"]
    for f, entry in enumerate(vocab):  # code c ↔ vocabulary[c - 1], as in training
        assert entry["vocabulary"] == data.features.vocabs[f].tolist()


def test_raw_zip_is_served_with_the_trained_code_of_its_prefix(loaded):
    _, data, user, _, rec = loaded
    raw = {"gender": "F", "age": "25", "occupation": "7", "zip_code": "48067"}
    codes, unknown = rec.feature_codes(raw)
    trained = [_code(data, "gender", "F"), _code(data, "age", "25"), _code(data, "occupation", "7"),
               _code(data, "zip_code", "48")]
    assert codes.tolist() == [trained] and not unknown.any()
    history = [int(data.split.item_ids[i]) for i in (0, 5, 9)]
    served = rec.query_vectors([history], features=raw)
    expected = _tower_query(user, data, [0, 5, 9], trained)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    # Not a tautology: the zip code moves the query (here to what region "55" or "unknown" would give).
    for other in (_code(data, "zip_code", "55"), 0):
        moved = _tower_query(user, data, [0, 5, 9], trained[:3] + [other])
        assert np.abs(moved - expected).max() > 1e-3
    # The value as training stored it ("48") and any other zip of the region are the same input.
    for same in ("48", "48999", "48067-1234"):
        np.testing.assert_array_equal(rec.query_vectors([history], features={**raw, "zip_code": same}), served)


def test_every_training_user_is_served_its_trained_codes_and_query(loaded):
    cfg, data, user, _, rec = loaded
    raw = data.features.raw
    assert raw.shape == (data.split.num_users, 4)
    assert all(len(z) == 5 for z in raw[:, NAMES.index("zip_code")])  # raw values, not the prefixes
    codes, unknown = rec.feature_codes(raw, n=len(raw))
    np.testing.assert_array_equal(codes, data.features.codes)
    assert not unknown.any()
    histories = [[data.split.item_ids[i].item() for i in h[h >= 0]] for h in data.test.history]
    served = rec.query_vectors(histories, features=raw)
    offline = queries_for(user, data.test, data.features.codes, True, 512)
    np.testing.assert_allclose(served, offline, rtol=0, atol=1e-5)


def test_unknown_values_are_counted_logged_and_served_as_unknown(loaded, caplog):
    _, data, user, _, rec = loaded
    history = [int(data.split.item_ids[i]) for i in (1, 2)]
    known = {"gender": "M", "age": "35", "occupation": "3", "zip_code": "55117"}
    odd = {**known, "gender": "X", "zip_code": "99999"}
    with caplog.at_level(logging.WARNING, logger="recall.serving"):
        got = rec.recommend([history, history], k=5, features=[odd, known])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["served 2 user feature value(s) unknown to the model as 'unknown': gender='X', zip_code='99999'"]
    _, unknown = rec.serve([history, history], features=[odd, known])
    assert unknown.tolist() == [[True, False, False, True], [False] * 4]
    # Served as code 0, which is what "" (explicitly unknown) gives, without a warning.
    caplog.clear()
    explicit = {**known, "gender": "", "zip_code": None}
    with caplog.at_level(logging.WARNING, logger="recall.serving"):
        assert rec.recommend([history], k=5, features=explicit) == got[:1]
    assert not caplog.records
    codes, _ = rec.feature_codes(odd)
    assert codes[0, 0] == 0 and codes[0, 3] == 0
    np.testing.assert_allclose(rec.query_vectors([history], features=odd),
                               _tower_query(user, data, [1, 2], codes[0].tolist()), rtol=0, atol=1e-6)
    assert got[0] != got[1]  # and the features matter to the ranking


def test_missing_or_foreign_features_are_errors_naming_them(loaded):
    _, data, _, _, rec = loaded
    history = [int(data.split.item_ids[0])]
    with pytest.raises(RecallError, match=r"features: 'age' is missing"):
        rec.recommend([history], features={"gender": "F", "occupation": "1", "zip_code": "48067"})
    with pytest.raises(RecallError, match=r"trained with user features \['gender', 'age', 'occupation', 'zip_code'\]"):
        rec.recommend([history])
    with pytest.raises(RecallError, match=r"'height' is not a feature of this model"):
        rec.recommend([history], features={"gender": "F", "age": "1", "occupation": "1", "zip_code": "4",
                                           "height": "180"})
    with pytest.raises(RecallError, match=r"features: 1 rows for 2 histories"):
        rec.recommend([history, history], features=[{"gender": "F"}])


def test_cli_query_takes_raw_values_and_reports_unknown_ones(features_run, loaded, capsys):
    run_dir, _ = features_run
    _, data, _, _, rec = loaded
    export = str(run_dir / "export")
    history = [str(data.split.item_ids[i]) for i in (3, 4)]
    args = ["query", export, "--history", ",".join(history), "-k", "5", "--json",
            "--feature", "gender=F", "--feature", "age=18", "--feature", "occupation=4"]
    assert cli.main([*args, "--feature", "zip_code=02460"]) == 0
    out = capsys.readouterr()
    features = {"gender": "F", "age": "18", "occupation": "4", "zip_code": "02460"}
    assert json.loads(out.out)["items"] == rec.recommend([[int(h) for h in history]], k=5, features=features)[0]
    assert out.err == ""
    assert cli.main([*args, "--feature", "zip_code=9"]) == 0
    out = capsys.readouterr()
    assert out.err == "note: served 1 user feature value(s) unknown to the model as 'unknown': zip_code='9'\n"
    assert json.loads(out.out)["items"] == rec.recommend([[int(h) for h in history]], k=5,
                                                         features={**features, "zip_code": ""})[0]
    assert cli.main(args) == 2  # zip_code not given: an error naming it, not a silent "unknown"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --feature zip_code: missing")
    assert "--feature zip_code= for unknown" in err


def test_prefix_counts_characters_in_python_and_in_the_tower():
    """Training cuts value[:n] (code points); the tower must too (tf.strings.substr in bytes would not)."""
    table = pd.DataFrame({"city": ["Zürich", "Zug", "Ørsta", ""]}, index=pd.Index([1, 2, 3, 4], name="user_id"))
    feats = encode_user_features(table, np.array([1, 2, 3, 4]), prefix={"city": 2})
    assert feats.vocabs[0].tolist() == ["Zu", "Zü", "Ør"]  # sorted by code point; codes 1, 2, 3
    assert feats.raw[:, 0].tolist() == ["Zürich", "Zug", "Ørsta", ""]
    tower = ServingTower(None, np.arange(3), feats.vocabs, 4, False, prefixes=feats.prefixes)
    values = ["Zürich", "Zühlke", "Zug", "Ørsta", "Z", "", "Zx"]
    codes, unknown = tower._codes(tf.constant([[v] for v in values]))
    py_codes, py_unknown = feats.lookup({"city": np.array(values)})
    np.testing.assert_array_equal(codes.numpy(), py_codes)
    np.testing.assert_array_equal(unknown.numpy().astype(bool), py_unknown)
    assert py_codes[:, 0].tolist() == [2, 2, 1, 3, 0, 0, 0]
    assert py_unknown[:, 0].tolist() == [False, False, False, False, True, False, True]


def test_prefix_at_encoding_equals_prefix_at_reading(tmp_path):
    """The new path (raw table, prefix in encode_user_features) codes users exactly as the old one."""
    users = pd.DataFrame({"user_id": [1, 2, 3, 4], "gender": ["F", "M", None, "F"], "age": [1, 56, 25, 25],
                          "zip_code": ["02460", "70072", "55117-1234", "02139"]})
    users.to_parquet(tmp_path / "u.parquet")
    ids = np.array([4, 3, 9, 1, 2])  # 9 is not in the table: unknown
    old = encode_user_features(read_user_features(tmp_path / "u.parquet", prefix={"zip_code": 3}), ids)
    new = encode_user_features(read_user_features(tmp_path / "u.parquet"), ids, prefix={"zip_code": 3})
    np.testing.assert_array_equal(new.codes, old.codes)
    assert [v.tolist() for v in new.vocabs] == [v.tolist() for v in old.vocabs]
    assert new.prefixes == [None, None, 3] and old.prefixes == []
    assert new.raw[:, 2].tolist() == ["02139", "55117-1234", "", "02460", "70072"]
    with pytest.raises(RecallError, match=r"data\.user_features\.prefix\.zip: 'zip' is not one of the feature"):
        encode_user_features(read_user_features(tmp_path / "u.parquet"), ids, prefix={"zip": 2})


def test_a_feature_no_training_user_has_is_served_as_unknown():
    """An all-missing column has an empty vocabulary: every value is unknown (code 0), in Python and in the tower."""
    table = pd.DataFrame({"job": ["", None], "zip": ["48067", "55117"]}, index=pd.Index([1, 2], name="user_id"))
    feats = encode_user_features(table, np.array([1, 2]), prefix={"zip": 2})
    assert feats.sizes == [0, 2] and feats.codes.tolist() == [[0, 1], [0, 2]]
    tower = ServingTower(None, np.arange(3), feats.vocabs, 4, False, prefixes=feats.prefixes)
    values = [["nurse", "55999"], ["", "99"]]
    codes, unknown = tower._codes(tf.constant(values))
    py_codes, py_unknown = feats.lookup({"job": np.array([v[0] for v in values]), "zip": np.array([v[1] for v in values])})
    assert codes.numpy().tolist() == py_codes.tolist() == [[0, 2], [0, 0]]
    assert unknown.numpy().astype(bool).tolist() == py_unknown.tolist() == [[True, False], [False, True]]
