import faiss
import numpy as np
import pytest

from recall.errors import RecallError
from recall.index import (
    build_index,
    check_index_config,
    fold_bias,
    fold_query,
    load_index,
    save_index,
    search,
)


def brute_force(users, items, bias, k, seen_rows=None):
    """Top-k of `u @ V.T + b` in numpy; seen items score -inf and come back as id -1."""
    logits = users @ items.T + (0.0 if bias is None else bias[None, :])
    if seen_rows is not None:
        for q, row in enumerate(seen_rows):
            logits[q, list(row)] = -np.inf
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(logits, order, axis=1)
    ids = np.where(np.isfinite(scores), order, -1)
    # np.argsort cannot return more columns than items; pad like search() does.
    pad = k - ids.shape[1]
    if pad > 0:
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids, scores


def to_csr(rows):
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate(
        [np.asarray(r, dtype=np.int64) for r in rows] + [np.zeros(0, np.int64)]
    )
    return indptr, indices


@pytest.fixture
def random_model():
    rng = np.random.default_rng(0)
    users = rng.normal(size=(50, 8)).astype(np.float32)
    items = rng.normal(size=(200, 8)).astype(np.float32)
    bias = rng.normal(size=200).astype(np.float32)
    return users, items, bias


def test_fold_bias_reproduces_the_logit():
    # [u, 1] · [v, b] = u·v + b: [1, 2, 1] · [3, 4, 0.5] = 3 + 8 + 0.5 = 11.5
    v = fold_bias(np.array([[3.0, 4.0]]), np.array([0.5]))
    u = fold_query(np.array([[1.0, 2.0]]), with_bias=True)
    assert v.dtype == np.float32 and v.shape == (1, 3) and v.flags.c_contiguous
    assert float((u @ v.T)[0, 0]) == pytest.approx(11.5)
    assert fold_bias(np.ones((4, 2), np.float64), None).shape == (4, 2)
    assert fold_query(np.ones((3, 2)), with_bias=False).shape == (3, 2)


@pytest.mark.parametrize("with_bias", [False, True])
def test_flat_top_k_equals_brute_force(random_model, with_bias):
    users, items, bias = random_model
    bias = bias if with_bias else None
    index = build_index(fold_bias(items, bias))
    ids, scores = search(index, fold_query(users, with_bias), k=10, batch_size=16)
    want_ids, want_scores = brute_force(users, items, bias, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_exclusion_hand_made():
    # One dimension, item i has score i for query [1]: ranking is 4, 3, 2, 1, 0.
    # Query 0 excludes {4, 2} -> 3, 1, 0; query 1 excludes nothing -> 4, 3, 2.
    index = build_index(np.arange(5, dtype=np.float32)[:, None])
    queries = np.ones((2, 1), np.float32)
    ids, scores = search(index, queries, k=3, exclude=to_csr([[4, 2], []]))
    np.testing.assert_array_equal(ids, [[3, 1, 0], [4, 3, 2]])
    np.testing.assert_allclose(scores, [[3, 1, 0], [4, 3, 2]])


def test_exclusion_equals_brute_force_with_seen_set_to_minus_inf(random_model):
    users, items, bias = random_model
    rng = np.random.default_rng(1)
    n = items.shape[0]
    # Exclusion counts from 0 to nearly the whole catalogue, shuffled across rows so that the
    # sort-by-count and the restore-original-order both matter; some duplicates too.
    counts = rng.permutation(np.linspace(0, n - 3, users.shape[0]).astype(int))
    counts[:5] = 0
    seen = [rng.choice(n, size=c, replace=False) for c in counts]
    seen[7] = np.concatenate([seen[7], seen[7][:3]])
    index = build_index(fold_bias(items, bias))
    ids, scores = search(index, fold_query(users, True), k=10, exclude=to_csr(seen), batch_size=8)
    want_ids, want_scores = brute_force(users, items, bias, 10, seen)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    for q, row in enumerate(seen):
        assert not np.isin(ids[q], row).any()


def test_padding_when_catalogue_runs_out():
    # 4 items, k = 3, query 0 excludes 2 of them -> only 2 survivors, then -1 / -inf.
    index = build_index(np.arange(4, dtype=np.float32)[:, None])
    ids, scores = search(index, np.ones((2, 1), np.float32), k=3, exclude=to_csr([[3, 0], [1]]))
    np.testing.assert_array_equal(ids, [[2, 1, -1], [3, 2, 0]])
    assert scores[0, 2] == -np.inf and np.isfinite(scores[1]).all()
    # k larger than the catalogue: every row padded.
    ids, scores = search(index, np.ones((1, 1), np.float32), k=6)
    np.testing.assert_array_equal(ids, [[3, 2, 1, 0, -1, -1]])
    assert np.isneginf(scores[0, 4:]).all()


@pytest.mark.parametrize(
    "factory, params",
    [("HNSW16", {"ef_search": 64}), ("IVF4,Flat", {"nprobe": 4}), ("IVF4,PQ4x4", {})],
)
def test_approximate_factories_return_valid_ids(random_model, factory, params):
    users, items, _ = random_model
    index = build_index(items, factory, **params)
    ids, _ = search(index, users, k=10)
    assert ids.shape == (50, 10)
    assert ((ids >= 0) & (ids < items.shape[0])).all()
    # Each row's ids are distinct.
    assert all(len(set(row)) == 10 for row in ids.tolist())
    if factory == "IVF4,Flat":
        # nprobe = nlist scans every list, so the search is exact.
        want, _ = brute_force(users, items, None, 10)
        np.testing.assert_array_equal(ids, want)
        assert faiss.extract_index_ivf(index).nprobe == 4


def test_bad_factory_string_names_the_factory():
    with pytest.raises(RecallError, match=r"index.factory 'XYZ' is not a valid faiss"):
        build_index(np.ones((10, 4), np.float32), "XYZ")


def test_too_few_training_vectors_for_ivf():
    with pytest.raises(RecallError, match=r"'IVF4096,Flat' needs at least 4096 training vectors"):
        build_index(np.ones((100, 4), np.float32), "IVF4096,Flat")


def test_nprobe_on_flat_is_a_user_error():
    with pytest.raises(RecallError, match=r"index.nprobe"):
        build_index(np.ones((10, 4), np.float32), "Flat", nprobe=8)


@pytest.mark.parametrize("n, factory, params", [
    (40, "XYZ", {}), (40, "IVF64,Flat", {}), (40, "Flat", {"nprobe": 2}), (40, "HNSW8", {"nprobe": 2}),
    (40, "PQ4", {}), (40, "HNSW8,PQ4", {}), (40, "IVF4,PQ2x4", {"nprobe": 2}), (40, "HNSW8", {"ef_search": 16}),
])
def test_check_index_config_refuses_what_build_index_refuses(n, factory, params):
    """The pre-flight check (run before a run directory is written) agrees with the real build."""
    vectors = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    try:
        build_index(vectors, factory, **params)
        expected = None
    except RecallError as e:
        expected = str(e)
    if expected is None:
        check_index_config(n, 8, factory, **params)
    else:
        with pytest.raises(RecallError) as info:
            check_index_config(n, 8, factory, **params)
        assert str(info.value) == expected


def test_save_load_round_trip(tmp_path, random_model):
    users, items, bias = random_model
    index = build_index(fold_bias(items, bias))
    path = tmp_path / "export" / "items.faiss"
    save_index(index, path)
    assert [p.name for p in path.parent.iterdir()] == ["items.faiss"]  # no temp file left
    loaded = load_index(path)
    assert loaded.ntotal == 200 and loaded.d == 9
    queries = fold_query(users, True)
    np.testing.assert_array_equal(search(loaded, queries, 5)[0], search(index, queries, 5)[0])


def test_missing_or_corrupt_index_file(tmp_path):
    with pytest.raises(RecallError, match=r"nope\.faiss"):
        load_index(tmp_path / "nope.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"definitely not a faiss index")
    with pytest.raises(RecallError, match=r"bad\.faiss"):
        load_index(bad)


def test_too_few_training_vectors_for_pq_codebooks():
    # PQ4 on 8 bits trains 256 centroids per sub-quantizer; 100 vectors cannot.
    with pytest.raises(RecallError, match=r"'PQ4' needs at least 256 training vectors \(got 100\)"):
        build_index(np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32), "PQ4")


def test_ivf_build_is_seeded(random_model):
    users, items, _ = random_model
    first = search(build_index(items, "IVF8,Flat", nprobe=2, seed=3), users, k=10)[0]
    again = search(build_index(items, "IVF8,Flat", nprobe=2, seed=3), users, k=10)[0]
    np.testing.assert_array_equal(first, again)
