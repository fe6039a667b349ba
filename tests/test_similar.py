"""recall/similar.py: item-to-item neighbours without the bias, the item itself left out.

Hand-made vectors whose neighbours are worked out in comments (inner product and cosine, a bias big
enough to reorder everything if it leaked in), then one tiny trained cosine bundle through the
Python API and `recall similar`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pre_recipe import PRE_RECIPE

pytest.importorskip("faiss")

from recall.errors import RecallError  # noqa: E402
from recall.index import build_index, fold_bias  # noqa: E402
from recall.similar import SimilarItems, item_queries  # noqa: E402

# Five items, D = 2, raw ids 10…14. Item 12 has a huge bias (popular), item 13 a negative one.
V = np.array([[1.0, 0.0],    # 10
              [0.9, 0.1],    # 11
              [0.0, 1.0],    # 12
              [2.0, 1.0],    # 13
              [-1.0, 0.0]],  # 14
             np.float32)
B = np.array([0.0, 0.0, 10.0, -5.0, 0.0], np.float32)
IDS = np.array([10, 11, 12, 13, 14], np.int64)


def _items(vectors: np.ndarray, bias: np.ndarray | None, ids: np.ndarray = IDS) -> SimilarItems:
    rows = fold_bias(vectors, bias)
    return SimilarItems(build_index(rows, "Flat"), rows, ids, bias_folded=bias is not None)


def test_inner_product_neighbours_leave_the_bias_out():
    # v_10 · v_i: 11 → 0.9, 12 → 0.0, 13 → 2.0, 14 → −1.0 (10 itself: 1.0, excluded).
    # With the bias it would be 12 → 10.0, 11 → 0.9, 14 → −1.0, 13 → −3.0.
    ids, scores = _items(V, B).similar([10], k=4)
    assert ids == [[13, 11, 12, 14]]
    np.testing.assert_allclose(scores[0], [2.0, 0.9, 0.0, -1.0], atol=1e-6)


def test_cosine_neighbours_differ_from_inner_product():
    # A cosine model exports unit vectors: u_11 = (0.9, 0.1)/√0.82, u_13 = (2, 1)/√5, so from 10:
    # 11 → 0.9/√0.82 = 0.99388, 13 → 2/√5 = 0.89443, 12 → 0, 14 → −1. (Inner product put 13 first.)
    unit = V / np.linalg.norm(V, axis=1, keepdims=True)
    ids, scores = _items(unit, B).similar([10, 12], k=2)
    assert ids == [[11, 13], [13, 11]]  # from 12: 13 → 1/√5 = 0.44721, 11 → 0.1/√0.82 = 0.11043
    np.testing.assert_allclose(scores, [[0.99388, 0.89443], [0.44721, 0.11043]], atol=1e-5)


def test_without_a_bias_column_the_vectors_are_searched_as_they_are():
    ids, scores = _items(V, None).similar([13], k=3)
    # v_13 · v_i: 10 → 2.0, 11 → 1.9, 12 → 1.0, 14 → −2.0
    assert ids == [[10, 11, 12]]
    np.testing.assert_allclose(scores[0], [2.0, 1.9, 1.0], atol=1e-6)


def test_the_item_is_left_out_but_an_identical_one_is_not():
    vectors = np.vstack([V, V[:1]])  # item 15 is a copy of item 10
    ids, scores = _items(vectors, np.r_[B, 0.0], np.r_[IDS, 15]).similar([10, 15], k=2)
    # From 10: 13 → 2.0, 15 (its copy) → 1.0, 11 → 0.9, …; from 15 the same with 10 in the copy's place.
    assert ids == [[13, 15], [13, 10]]
    np.testing.assert_allclose(scores, [[2.0, 1.0], [2.0, 1.0]], atol=1e-6)


def test_item_queries_zero_only_the_bias_column():
    rows = fold_bias(V, B)
    np.testing.assert_array_equal(item_queries(rows, np.array([2, 3]), True), [[0.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    np.testing.assert_array_equal(item_queries(V, np.array([2]), False), [[0.0, 1.0]])
    assert rows[2, 2] == 10.0  # the index's own copy is untouched


def test_string_ids_unknown_ids_and_k():
    items = _items(V, B, np.array(["a", "b", "c", "d", "e"]))
    assert items.similar(["a"], k=1) == ([["d"]], [[2.0]])
    with pytest.raises(RecallError, match=r"item 'zz': not in the catalogue of the bundle \(5 items\)"):
        items.similar(["a", "zz"], k=2)
    for k in (0, 5):
        with pytest.raises(RecallError, match=rf"k={k}: must be between 1 and 4"):
            items.similar(["a"], k=k)
    with pytest.raises(RecallError, match="integers"):
        _items(V, B).similar(["x"])


# --- a trained bundle -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny cosine model with item biases (so the index holds [v_i, b_i]): 60 users × 30 items, 1 epoch."""
    pytest.importorskip("tensorflow")
    import recall
    from recall.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("similar")
    log = root / "log.parquet"
    synthesize(num_users=60, num_items=30, interactions_per_user=8, num_topics=3, seed=2).to_parquet(log)
    cfg = recall.load_config(None, [
        "data.source=file", f"data.path={log}", "model.dim=8", "model.hidden=[8]", "model.max_history=5",
        "model.history=[{kind: mean}]", *PRE_RECIPE,
        "model.normalize=true", "model.temperature=0.1", "loss.num_sampled=5", "train.epochs=1",
        "train.batch_size=64", "eval.ks=[5,10]", "train.early_stopping.metric=hr@10"])
    recall.train(cfg, root / "run")
    return root / "run"


def test_a_trained_bundle_gives_the_cosine_of_its_item_vectors(bundle):
    from recall.pipeline import load_run
    from recall.serving import Recommender

    export = bundle / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["normalized"] is True and manifest["bias_folded"] is True
    _, data, _, items = load_run(bundle)
    weights, biases = (t.numpy() for t in items.weights_and_biases())
    assert np.abs(biases).max() > 0  # trained biases: leaking them in would change the scores
    cosine = weights @ weights.T  # unit rows: the cosine of every pair
    np.testing.assert_allclose(np.diag(cosine), 1.0, atol=1e-5)
    raw = [data.split.item_ids[j].item() for j in (0, 7, 29)]
    ids, scores = Recommender.load(export).similar(raw, k=5)
    assert (ids, scores) == SimilarItems.load(export).similar(raw, k=5)
    for j, row_ids, row_scores in zip((0, 7, 29), ids, scores, strict=True):
        expected = np.delete(cosine[j], j)
        np.testing.assert_allclose(row_scores, np.sort(expected)[::-1][:5], atol=1e-5)
        rows = [int(np.flatnonzero(data.split.item_ids == i)[0]) for i in row_ids]
        np.testing.assert_allclose(cosine[j, rows], row_scores, atol=1e-5)
        assert data.split.item_ids[j].item() not in row_ids


def test_the_cli_prints_the_same_neighbours(bundle, capsys):
    from recall.cli import main

    export = bundle / "export"
    item = str(np.load(export / "item_ids.npy")[3])
    ids, scores = SimilarItems.load(export).similar([item], k=4)
    capsys.readouterr()
    assert main(["similar", str(export), "--item", item, "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"item": item, "items": ids[0], "scores": scores[0]}
    assert main(["similar", str(export), "--item", item, "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "item", "score"] and len(lines) == 5
    assert lines[1].split() == ["1", str(ids[0][0]), f"{scores[0][0]:.4f}"]


def test_the_cli_refuses_an_unknown_item_in_one_line(bundle, capsys):
    from recall.cli import main

    capsys.readouterr()
    assert main(["similar", str(bundle / "export"), "--item", "123456789"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        f"error: item 123456789: not in the catalogue of {bundle / 'export'} (30 items); pass a raw item id the "
        "model was trained on"]
