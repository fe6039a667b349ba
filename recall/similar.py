"""Item-to-item neighbours from an export bundle: the "similar items" row (`recall similar`).

    similar(j) = top-k over i ≠ j of  v_j · v_i

over the model's own item vectors — the cosine of the two items when the model is normalised
(`model.normalize`: the exported vectors are unit length), their inner product otherwise — searched
in the bundle's `items.faiss`. When that index holds `[v_i, b_i]` (the bias folded in, so that a
user query `[u, 1]` scores `u·v_i + b_i`), the item query is `[v_j, 0]`: the bias is the item's
popularity for a user, not its likeness to item j, and `[v_j, 0] · [v_i, b_i] = v_j · v_i` leaves
it out. The item itself is excluded from its own list.

Python: `SimilarItems.load(export_dir).similar(item_ids, k)` (no user tower needed), or
`Recommender.load(export_dir).similar(item_ids, k)`; both return raw ids and scores, best first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recall.errors import RecallError


def item_queries(vectors: np.ndarray, rows: np.ndarray, bias_folded: bool) -> np.ndarray:
    """Index rows `[N, d]` → item queries `[len(rows), d]`: row j as is, its bias column set to 0."""
    queries = np.array(vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32, order="C")
    if bias_folded:
        queries[:, -1] = 0.0
    return queries


def similar_rows(index, vectors: np.ndarray, rows: np.ndarray, k: int,
                 bias_folded: bool) -> tuple[np.ndarray, np.ndarray]:
    """The `k` index rows nearest each of `rows` (itself excluded): ids `[Q, k]` int64, scores `[Q, k]`.

    `vectors` `[N, d]` are the indexed rows (bias as the last column when `bias_folded`).
    """
    from recall.index import search

    rows = np.asarray(rows, dtype=np.int64)
    exclude = (np.arange(len(rows) + 1, dtype=np.int64), rows)  # row q excludes rows[q] only
    return search(index, item_queries(vectors, rows, bias_folded), k, exclude=exclude)


class SimilarItems:
    """Item-to-item search over an index and the matrix it holds. Use `SimilarItems.load(export_dir)`.

    index    faiss inner-product index over `vectors`
    vectors  `[N, d]` the indexed rows (may be a read-only memory map)
    item_ids `[N]` raw id of each row (int64 or str)
    """

    def __init__(self, index, vectors: np.ndarray, item_ids: np.ndarray, bias_folded: bool,
                 source: str = "the bundle"):
        if vectors.shape != (index.ntotal, index.d) or len(item_ids) != index.ntotal:
            raise ValueError(f"vectors {vectors.shape} and {len(item_ids)} ids do not match the index "
                             f"({index.ntotal} × {index.d})")
        self.index, self.vectors, self.item_ids = index, vectors, item_ids
        self.bias_folded = bias_folded
        self.source = source
        self._order = np.argsort(item_ids, kind="stable")

    @classmethod
    def load(cls, export_dir: str | Path) -> SimilarItems:
        """Read (and verify, as `Recommender.load` does) a bundle's index, ids and item vectors."""
        from recall.index import load_index
        from recall.serving import _load_item_ids, read_manifest

        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        index = load_index(export_dir / "items.faiss")
        item_ids = _load_item_ids(export_dir / "item_ids.npy", manifest)
        return cls(index, load_item_vectors(export_dir, manifest, index), item_ids, manifest["bias_folded"],
                   str(export_dir))

    def rows_of(self, raw_ids) -> np.ndarray:
        """Raw ids → index rows; an id the model does not know is a RecallError naming it."""
        if self.item_ids.dtype.kind == "U":
            raw = np.asarray([str(i) for i in raw_ids], dtype=str)
        else:
            try:
                raw = np.asarray([int(i) for i in raw_ids], dtype=np.int64)
            except (TypeError, ValueError):
                raise RecallError(f"item ids must be integers for {self.source}, got {list(raw_ids)[:5]}") from None
        if len(raw) == 0:
            return np.zeros(0, np.int64)
        pos = np.searchsorted(self.item_ids, raw, sorter=self._order).clip(0, len(self.item_ids) - 1)
        rows = self._order[pos]
        unknown = raw[self.item_ids[rows] != raw]
        if len(unknown):
            raise RecallError(f"item {unknown[0].item()!r}: not in the catalogue of {self.source} "
                              f"({len(self.item_ids)} items); pass a raw item id the model was trained on")
        return rows

    def similar(self, item_ids, k: int = 10) -> tuple[list[list], list[list[float]]]:
        """For each raw item id, the `k` most similar raw ids (itself left out) and their scores, best first."""
        rows = self.rows_of(list(item_ids))
        n = int(self.index.ntotal)
        if k < 1 or k > n - 1:
            raise RecallError(f"k={k}: must be between 1 and {n - 1} (the catalogue of {n} items less the item itself)")
        ids, scores = similar_rows(self.index, self.vectors, rows, k, self.bias_folded)
        raw = [[self.item_ids[i].item() for i in row if i >= 0] for row in ids]
        return raw, [[float(s) for s, i in zip(srow, row) if i >= 0] for srow, row in zip(scores, ids)]


def load_item_vectors(export_dir: Path, manifest: dict, index) -> np.ndarray:
    """`item_vectors.npy` as a read-only memory map `[N, d]` (only the rows asked for are read), checked
    against the index and the manifest's bias folding."""
    path = export_dir / "item_vectors.npy"
    folded = manifest.get("bias_folded")
    if not isinstance(folded, bool) or manifest.get("dim") != index.d - int(folded):
        raise RecallError(f"{export_dir / 'manifest.json'}: 'bias_folded' ({folded!r}) and 'dim' "
                          f"({manifest.get('dim')!r}) do not fit the {index.d}-d index (edited?); re-export the run")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RecallError(f"{path}: not a plain .npy array ({type(e).__name__}); re-export the run") from None
    if vectors.ndim != 2 or vectors.shape != (index.ntotal, index.d) or vectors.dtype.kind != "f":
        raise RecallError(f"{path}: holds {vectors.dtype} {vectors.shape}, not the [{index.ntotal}, {index.d}] "
                          "float vectors of items.faiss; re-export the run")
    return vectors
