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
    if verify_files:
        for name, digest in manifest.get("files", {}).items():
            f = export_dir / name
            if not f.is_file():
                raise RecallError(f"{f}: listed in the manifest but missing; re-export the run")
            if sha256_file(f) != digest:
                raise RecallError(f"{f}: sha256 differs from manifest.json (corrupt or modified); re-export the run")
    return manifest


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
        item_ids = np.load(export_dir / "item_ids.npy", allow_pickle=False)
        if len(item_ids) != index.ntotal:
            raise RecallError(f"{export_dir / 'item_ids.npy'}: {len(item_ids)} ids for {index.ntotal} indexed "
                              "items; re-export the run")
        model = tf.saved_model.load(str(export_dir / "user_tower"))
        signature = model.signatures[manifest["signature"]["name"]]
        out_dim = signature.structured_outputs["query"].shape[-1]
        if out_dim != index.d:
            raise RecallError(f"{export_dir}: user tower returns {out_dim}-d queries but items.faiss is "
                              f"{index.d}-d; the bundle mixes two runs, re-export it")
        rec = cls(manifest, index, item_ids, signature)
        rec._model = model  # keep the SavedModel (and its lookup tables) alive
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
