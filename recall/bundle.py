"""The export bundle (DESIGN.md "Export bundle"): everything a service needs, with only tensorflow + faiss.

    export/
      manifest.json      format version, dims, metric, normalisation, bias folding, counts, factory,
                         config hash, package versions, serving signatures, the user-feature
                         transformations, the export parity figures, sha256 of every file
      items.faiss        the item index; searching it with the user tower's output gives training logits
      item_ids.npy       row → raw item id
      item_vectors.npy   the indexed matrix [N, d] (bias folded in as the last column when present)
      user_features.json (models with user features) each feature's prefix and vocabulary, in code order
      user_tower/        SavedModel; signature `serving_default(history[, user_features]) → {"query"[,
                         "unknown_features"]}` and, with user features, `feature_codes(user_features)`

The tower takes raw item ids and raw user-feature values: every transformation training applied
(prefix, vocabulary, unknown → code 0) happens inside it. Before the bundle is published, the test
queries are replayed through it as a client would send them (recall/evaluation/parity.py); a bundle
whose served metrics differ from the offline ones by more than the tolerance is refused.

The bundle is written into a temporary sibling folder, manifest last, then swapped into place; a
refused bundle is deleted and the previous one (if any) stays as it was.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from recall.data.vocabulary import FEATURES_FILE, storable_ids, write_vocabulary
from recall.evaluation.model_eval import item_vectors
from recall.index import build_index, save_index
from recall.io import sha256_file, write_json, write_npy

FORMAT = "recall-export"
FORMAT_VERSION = 2  # 2: user features are served raw (prefix + vocabulary inside the tower)
MANIFEST = "manifest.json"
FEATURE_CODES = "feature_codes"  # the second signature of a tower with user features


class ServingTower(tf.Module):
    """Raw item ids (+ raw user-feature values) → query vector for items.faiss.

    history        int64 or string [batch, L], chronological (most recent last); `pad` entries and
                   ids unknown to the model are ignored; the last `max_history` known ids are used.
    user_features  string [batch, F] raw values in the manifest's feature order (only when F > 0);
                   each is cut to its prefix (characters) and looked up in its vocabulary, as in
                   training (recall/data/features.py); "" and values outside the vocabulary → code 0.
    returns        {"query": float32 [batch, d]} with d = D (+1 when the bias is folded into the index),
                   and with features "unknown_features": int32 [batch, F], 1 where a non-empty value
                   was not in the vocabulary (served as unknown).
    `feature_codes(user_features)` → {"codes": int32 [batch, F], "unknown_features": int32 [batch, F]}:
                   the codes the tower feeds the model (what training fed for the same raw values).
    """

    def __init__(self, user_tower, item_ids: np.ndarray, feature_vocabs: list[np.ndarray], max_history: int,
                 with_bias: bool, prefixes: list[int | None] | None = None):
        super().__init__()
        self.user_tower = user_tower
        self.max_history = max_history
        self.with_bias = with_bias
        self.num_features = len(feature_vocabs)
        self.prefixes = list(prefixes) if prefixes else [None] * self.num_features
        self.string_ids = item_ids.dtype.kind in "USO"
        key_dtype = tf.string if self.string_ids else tf.int64
        keys = tf.constant(item_ids.astype(str) if self.string_ids else item_ids.astype(np.int64), key_dtype)
        self.item_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(item_ids), dtype=tf.int64)), default_value=-1)
        self.feature_tables = [  # None: a feature no training user had a value for (every value is unknown)
            tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(np.asarray(v).astype(str).reshape(-1), tf.string),
                                                    tf.range(1, len(v) + 1, dtype=tf.int64)), default_value=0)
            if len(v) else None
            for v in feature_vocabs
        ]
        history_spec = tf.TensorSpec([None, None], key_dtype, name="history")
        if self.num_features:
            features_spec = tf.TensorSpec([None, self.num_features], tf.string, name="user_features")
            self.serve = tf.function(self._serve_with_features, input_signature=[history_spec, features_spec])
            self.feature_codes = tf.function(self._feature_codes_output, input_signature=[features_spec])
        else:
            self.serve = tf.function(self._serve_history, input_signature=[history_spec])

    def signatures(self) -> dict:
        out = {"serving_default": self.serve}
        if self.num_features:
            out[FEATURE_CODES] = self.feature_codes
        return out

    def _right_align(self, history):
        """Known ids moved to the right in order, unknown/pad → -1 on the left; last max_history columns."""
        ids = self.item_table.lookup(history)  # [B, L], -1 = pad or unknown
        length = tf.shape(ids)[1]
        pos = tf.range(length)[None, :]
        key = tf.where(ids >= 0, length + pos, pos)  # unknown first, known after, each in order
        ids = tf.gather(ids, tf.argsort(key, axis=1, stable=True), batch_dims=1)
        ids = tf.pad(ids, [[0, 0], [self.max_history, 0]], constant_values=-1)
        return tf.cast(ids[:, -self.max_history :], tf.int32)

    def _codes(self, user_features):
        """Raw string values [B, F] → (int32 codes [B, F], int32 unknown [B, F]); the training transform."""
        codes, unknown = [], []
        for i, (table, n) in enumerate(zip(self.feature_tables, self.prefixes, strict=True)):
            raw = user_features[:, i]
            # UTF8_CHAR: the first n characters, as Python's value[:n] in training (not n bytes).
            key = raw if n is None else tf.strings.substr(raw, 0, n, unit="UTF8_CHAR")
            code = table.lookup(key) if table is not None else tf.zeros(tf.shape(key), tf.int64)
            codes.append(code)
            unknown.append(tf.logical_and(tf.equal(code, 0), tf.not_equal(raw, "")))
        return tf.cast(tf.stack(codes, axis=1), tf.int32), tf.cast(tf.stack(unknown, axis=1), tf.int32)

    def _query(self, history, codes):
        features = {"history": self._right_align(history), "age": tf.zeros([tf.shape(history)[0]]),
                    "user_features": codes}
        q = self.user_tower(features, training=False)
        if self.with_bias:
            q = tf.concat([q, tf.ones([tf.shape(q)[0], 1], q.dtype)], axis=1)
        return q

    def _serve_history(self, history):
        return {"query": self._query(history, tf.zeros([tf.shape(history)[0], 0], tf.int32))}

    def _serve_with_features(self, history, user_features):
        codes, unknown = self._codes(user_features)
        return {"query": self._query(history, codes), "unknown_features": unknown}

    def _feature_codes_output(self, user_features):
        codes, unknown = self._codes(user_features)
        return {"codes": codes, "unknown_features": unknown}


def feature_transforms(features) -> list[dict]:
    """The manifest's record of each user feature's transformation (order = the input's columns)."""
    return [{"name": name, "prefix": features.prefix(i), "vocabulary_size": len(vocab), "unknown_code": 0}
            for i, (name, vocab) in enumerate(zip(features.names, features.vocabs, strict=True))]


def lineage(cfg) -> dict | None:
    """The run a warm-started run began from: {"parent_run_dir", "parent_config_hash"}; None for a cold start."""
    ws = getattr(cfg, "warm_start", None)
    return None if ws is None else {"parent_run_dir": ws.run_dir, "parent_config_hash": ws.parent_config_hash}


def _versions() -> dict:
    import faiss
    import keras

    from recall import __version__

    return {"recall": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__}


def export_bundle(cfg, data, user_tower, item_tower, out_dir: str | Path,
                  tolerance: float | None = None) -> dict:
    """Write the bundle for trained towers to `out_dir`, atomically, once it passes the parity check.

    The bundle is built in a temporary sibling folder, loaded back as a client loads it, and the test
    queries are replayed through it (recall/evaluation/parity.py); only when the served HR@K/NDCG@K
    match the offline ones within `tolerance` (default parity.default_tolerance(Q)) and the served feature
    codes equal the trained ones is it swapped into place. Returns the parity figures (also in
    manifest.json as "export_parity"); raises ParityError (a RecallError carrying them) otherwise,
    leaving `out_dir` as it was.
    """
    from recall.evaluation.parity import check_bundle

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        vectors, with_bias = item_vectors(item_tower)
        ix = cfg.index
        index = build_index(vectors, ix.factory, nprobe=ix.nprobe, ef_search=ix.ef_search)
        save_index(index, tmp / "items.faiss")
        item_ids = storable_ids(data.split.item_ids)
        feats = data.features
        write_vocabulary(tmp, item_ids, feats)  # item_ids.npy, user_features.json (with features)
        write_npy(tmp / "item_vectors.npy", vectors)
        serving = ServingTower(user_tower, item_ids, feats.vocabs, cfg.model.max_history, with_bias,
                               prefixes=[feats.prefix(i) for i in range(len(feats.names))])
        tf.saved_model.save(serving, str(tmp / "user_tower"), signatures=serving.signatures())
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        string_ids = item_ids.dtype.kind in "US"
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dim": cfg.model.dim,
            "index_dim": int(vectors.shape[1]),
            "metric": "inner_product",
            "normalized": cfg.model.normalize,
            "temperature": cfg.model.temperature,
            "bias_folded": with_bias,
            "num_items": int(vectors.shape[0]),
            "faiss_factory": ix.factory,
            "search_params": {"nprobe": ix.nprobe, "efSearch": ix.ef_search},
            "max_history": cfg.model.max_history,
            "item_id_dtype": "string" if string_ids else "int64",
            "history_pad": "" if string_ids else -1,
            "user_features": feats.names,
            "user_feature_transforms": feature_transforms(feats),
            "user_feature_encoding": (
                "raw string values; value[:prefix] (characters) when a prefix is set, then code = 1 + position "
                f"in the feature's vocabulary ({FEATURES_FILE}); '' and values outside it -> code 0 (unknown), "
                "as in training; every feature must be given ('' = unknown)") if feats.names else None,
            "signature": {"name": "serving_default",
                          "inputs": ["history"] + (["user_features"] if feats.names else []),
                          "output": "query",
                          "outputs": ["query"] + (["unknown_features"] if feats.names else []),
                          **({"feature_codes": FEATURE_CODES} if feats.names else {})},
            "config_hash": cfg.hash(),
            "lineage": lineage(cfg),
            "versions": _versions(),
            "files": {str(p.relative_to(tmp)): sha256_file(p) for p in files},
        }
        write_json(tmp / MANIFEST, manifest)  # last: a bundle without a manifest is incomplete
        # The replay reads the bundle back from disk (manifest, hashes, index, SavedModel) as serving does.
        parity = check_bundle(tmp, user_tower, index, data, cfg.eval.ks, with_bias,
                              batch_size=cfg.eval.batch_size, tolerance=tolerance, where=out_dir)
        write_json(tmp / MANIFEST, {**manifest, "export_parity": parity})
        _swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return parity


def _swap_in(new: Path, target: Path) -> None:
    """Replace folder `target` by `new`; at every moment either the old or the new bundle is complete."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)

