"""Serve an export bundle: `Recommender.load(export_dir).recommend(histories, k, exclude_seen=True)`.

Loading verifies the manifest (format, version, sha256 of every file, dimensions) before use, so a
truncated, tampered or mismatched bundle is refused with a message naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from recall.bundle import FORMAT, FORMAT_VERSION, MANIFEST
from recall.errors import RecallError
from recall.io import sha256_file

log = logging.getLogger(__name__)


def read_manifest(export_dir: str | Path, verify_files: bool = True) -> dict:
    """The bundle's manifest, checked: format, version, and (by default) every file's sha256."""
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    if not path.is_file():
        raise RecallError(f"{path}: missing; pass an export folder written by `recall train`/`recall export`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RecallError(f"{path}: not valid JSON (truncated or edited?); re-export the run") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RecallError(f"{path}: not a recall export manifest; re-export the run")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RecallError(f"{path}: format_version {manifest.get('format_version')!r} is not supported by "
                          f"this recall (expects {FORMAT_VERSION}); re-export with this version")
    _check_fields(manifest, path)
    if verify_files:
        for name, digest in manifest["files"].items():
            f = export_dir / name
            if not f.is_file():
                raise RecallError(f"{f}: listed in the manifest but missing; re-export the run")
            if sha256_file(f) != digest:
                raise RecallError(f"{f}: sha256 differs from manifest.json (corrupt or modified); re-export the run")
    return manifest


# Manifest fields serving reads, with the check each must pass (a tampered manifest is refused, not half-used).
_FIELDS = {
    "index_dim": lambda v: isinstance(v, int) and v >= 1,
    "num_items": lambda v: isinstance(v, int) and v >= 1,
    "item_id_dtype": lambda v: v in ("int64", "string"),
    "history_pad": lambda v: isinstance(v, (int, str)),
    "user_features": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
    "signature": lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
    "files": lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values()),
}


def _check_fields(manifest: dict, path: Path) -> None:
    for name, ok in _FIELDS.items():
        if name not in manifest or isinstance(manifest[name], bool) or not ok(manifest[name]):
            what = "missing" if name not in manifest else f"invalid ({str(manifest[name])[:60]!r})"
            raise RecallError(f"{path}: field {name!r} is {what} (truncated or edited?); re-export the run")
    for name in manifest["files"]:  # only files inside the bundle are read, and hashed
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise RecallError(f"{path}: 'files' lists {name!r}, outside the bundle (edited?); re-export the run")


def _load_item_ids(path: Path, manifest: dict) -> np.ndarray:
    """item_ids.npy without pickle: a 1-D int64 or str array matching manifest["item_id_dtype"]."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # truncated, not .npy, or an object array (pickle)
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RecallError(f"{path}: not a plain .npy array ({reason}); truncated and pickled files are "
                          "refused, re-export the run") from None
    kind = "i" if manifest["item_id_dtype"] == "int64" else "U"
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind != kind:
        raise RecallError(f"{path}: holds {getattr(ids, 'dtype', type(ids).__name__)} "
                          f"{getattr(ids, 'shape', '')}, not the 1-D {manifest['item_id_dtype']} ids the "
                          "manifest promises; re-export the run")
    return ids


class Recommender:
    """Top-K retrieval from an export bundle. Use `Recommender.load(export_dir)`."""

    def __init__(self, manifest: dict, index, item_ids: np.ndarray, signature):
        self.manifest = manifest
        self.index = index
        self.item_ids = item_ids
        self._signature = signature
        self._order = np.argsort(item_ids, kind="stable")
        self._string_ids = manifest["item_id_dtype"] == "string"

    @classmethod
    def load(cls, export_dir: str | Path) -> Recommender:
        import tensorflow as tf

        from recall.index import load_index

        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        index = load_index(export_dir / "items.faiss")
        for sp, value in (manifest.get("search_params") or {}).items():
            if value is not None:
                import faiss

                faiss.ParameterSpace().set_index_parameter(index, sp, value)
        if index.d != manifest["index_dim"] or index.ntotal != manifest["num_items"]:
            raise RecallError(f"{export_dir / 'items.faiss'}: index has d={index.d}, {index.ntotal} items but the "
                              f"manifest says d={manifest['index_dim']}, {manifest['num_items']} items; re-export")
        item_ids = _load_item_ids(export_dir / "item_ids.npy", manifest)
        if len(item_ids) != index.ntotal:
            raise RecallError(f"{export_dir / 'item_ids.npy'}: {len(item_ids)} ids for {index.ntotal} indexed "
                              "items; re-export the run")
        tower = export_dir / "user_tower"
        try:
            model = tf.saved_model.load(str(tower))
        except (OSError, ValueError, IndexError, KeyError, tf.errors.OpError) as e:  # truncated/foreign files
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise RecallError(f"{tower}: not a loadable SavedModel ({reason}); re-export the run") from None
        name = manifest["signature"]["name"]
        signature = getattr(model, "signatures", {}).get(name)
        if signature is None or "query" not in signature.structured_outputs:
            raise RecallError(f"{tower}: has no signature {name!r} returning 'query'; re-export the run")
        out_dim = signature.structured_outputs["query"].shape[-1]
        if out_dim != index.d:
            raise RecallError(f"{export_dir / 'items.faiss'}: index is {index.d}-d but the user tower returns "
                              f"{out_dim}-d queries; the bundle mixes two runs, re-export it")
        key = signature.structured_input_signature[1].get("history")
        want = tf.string if manifest["item_id_dtype"] == "string" else tf.int64
        if key is None or key.dtype != want:
            raise RecallError(f"{tower}: takes {getattr(key, 'dtype', 'no')} history ids but the manifest says "
                              f"{manifest['item_id_dtype']}; re-export the run")
        rec = cls(manifest, index, item_ids, signature)
        rec._model = model  # keep the SavedModel (and its lookup tables) alive
        rec._export_dir = export_dir  # item_vectors.npy is read by similar(), when first asked
        return rec

    # -- ids -------------------------------------------------------------------------------------
    def _coerce(self, ids) -> np.ndarray:
        if self._string_ids:
            return np.asarray([str(i) for i in ids], dtype=str)
        try:
            return np.asarray([int(i) for i in ids], dtype=np.int64)
        except (TypeError, ValueError):
            raise RecallError(f"history: item ids must be integers for this bundle, got {list(ids)[:5]}") from None

    def rows_of(self, raw_ids) -> np.ndarray:
        """Raw ids → index rows (-1 where unknown)."""
        raw = self._coerce(raw_ids)
        if len(raw) == 0:
            return np.zeros(0, np.int64)
        pos = np.searchsorted(self.item_ids, raw, sorter=self._order).clip(0, len(self.item_ids) - 1)
        rows = self._order[pos]
        return np.where(self.item_ids[rows] == raw, rows, -1)

    # -- queries ---------------------------------------------------------------------------------
    def query_vectors(self, histories: list[list], user_features: list[list[str]] | None = None) -> np.ndarray:
        """The user tower's query vectors `[len(histories), index_dim]` (raw ids in, unknown ids ignored)."""
        import tensorflow as tf

        pad = self.manifest["history_pad"]
        width = max([len(h) for h in histories] + [1])
        coerced = [self._coerce(h) for h in histories]
        # object, not str: np.full(..., "", dtype=str) is '<U1' and would cut every id to one character.
        dtype = object if self._string_ids else np.int64
        batch = np.full((len(histories), width), pad, dtype=dtype)
        for r, h in enumerate(coerced):
            batch[r, width - len(h):] = h
        args = {"history": tf.constant(batch)}
        names = self.manifest["user_features"]
        if names:
            feats = user_features or [[""] * len(names)] * len(histories)
            args["user_features"] = tf.constant(np.asarray(feats, dtype=str).reshape(len(histories), len(names)))
        return self._signature(**args)["query"].numpy()

    def recommend(self, histories: list[list], k: int = 10, exclude_seen: bool = True,
                  user_features: list[list[str]] | None = None, return_scores: bool = False):
        """Top-k raw item ids per history (best first). Unknown history ids are ignored (and logged)."""
        from recall.index import search

        if k < 1 or k > self.index.ntotal:
            raise RecallError(f"k={k}: must be between 1 and the catalogue size ({self.index.ntotal})")
        rows = [self.rows_of(h) for h in histories]
        unknown = sum(int((r < 0).sum()) for r in rows)
        if unknown:
            bad = [h for hist, r in zip(histories, rows) for h, x in zip(hist, r) if x < 0][:10]
            log.warning("ignored %d history item id(s) unknown to the model: %s", unknown,
                        ", ".join(map(str, bad)))
        queries = self.query_vectors(histories, user_features)
        exclude = None
        if exclude_seen:
            known = [np.unique(r[r >= 0]) for r in rows]
            exclude = (np.r_[0, np.cumsum([len(r) for r in known])].astype(np.int64),
                       np.concatenate(known + [np.zeros(0, np.int64)]).astype(np.int64))
        ids, scores = search(self.index, queries.astype(np.float32), k, exclude=exclude)
        raw = [[self.item_ids[i].item() for i in row if i >= 0] for row in ids]
        if return_scores:
            return raw, [[float(s) for s, i in zip(srow, row) if i >= 0] for srow, row in zip(scores, ids)]
        return raw

    # -- item to item ----------------------------------------------------------------------------
    def similar(self, item_ids: list, k: int = 10) -> tuple[list[list], list[list[float]]]:
        """For each raw item id, the `k` most similar raw ids (itself left out) and their scores, best
        first: the model's own item-item similarity without the bias (recall/similar.py)."""
        from recall.similar import SimilarItems, load_item_vectors

        if getattr(self, "_similar", None) is None:
            vectors = load_item_vectors(self._export_dir, self.manifest, self.index)
            self._similar = SimilarItems(self.index, vectors, self.item_ids, self.manifest["bias_folded"],
                                         str(self._export_dir))
        return self._similar.similar(item_ids, k)
