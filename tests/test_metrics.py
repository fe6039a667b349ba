import numpy as np
import pytest

from recall.evaluation.metrics import (
    MISS_RANK,
    coverage,
    metrics_by_popularity,
    popularity_boundaries,
    popularity_buckets,
    popularity_ranks,
    ranking_metrics,
    target_ranks,
)
from recall.evaluation.protocol import evaluate_popularity, evaluate_queries, format_table
from recall.index import build_index


def to_csr(rows):
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate(
        [np.asarray(r, dtype=np.int64) for r in rows] + [np.zeros(0, np.int64)]
    )
    return indptr, indices


def test_target_ranks_hand_made():
    topk = np.array(
        [
            [5, 3, 9],  # target 5 at rank 0
            [5, 3, 9],  # target 9 at rank 2
            [5, 3, 9],  # target 7 absent -> K = 3
            [4, -1, -1],  # OOV target -1 never matches the -1 padding -> 3
        ]
    )
    ranks = target_ranks(topk, np.array([5, 9, 7, -1]))
    assert ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, [0, 2, 3, 3])


def test_ranking_metrics_hand_computed():
    # Ranks 0, 2, 3 (= depth, a miss), 1 over 4 queries.
    # hr@1 = 1/4; hr@3 = 3/4 (ranks 0, 2, 1)
    # ndcg@1 = 1/4 * 1/log2(2) = 0.25
    # ndcg@3 = 1/4 * (1/log2(2) + 1/log2(4) + 1/log2(3)) = (1 + 0.5 + 0.63093) / 4 = 0.53273
    # mrr@3 = 1/4 * (1 + 1/3 + 1/2) = 0.45833
    m = ranking_metrics(np.array([0, 2, 3, 1]), [1, 3])
    assert m["count"] == 4
    assert m["hr@1"] == pytest.approx(0.25)
    assert m["ndcg@1"] == pytest.approx(0.25)
    assert m["mrr@1"] == pytest.approx(0.25)
    assert m["hr@3"] == pytest.approx(0.75)
    assert m["ndcg@3"] == pytest.approx((1 + 0.5 + 1 / np.log2(3)) / 4)
    assert m["mrr@3"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 4)
    # A miss from popularity_ranks is a miss at every K.
    assert ranking_metrics(np.array([MISS_RANK]), [200])["hr@200"] == 0.0


def test_popularity_ranks_hand_made():
    # Ranking is id order 0, 1, 2, ...
    # q0: target 5, excludes {1, 3, 8} -> 5 - 2 = 3
    # q1: target 2, excludes nothing -> 2
    # q2: target 4, excludes {4} -> miss
    # q3: target -1 (OOV) -> miss
    # q4: target 6, excludes {0, 0, 2} (duplicate) -> 6 - 2 = 4
    targets = np.array([5, 2, 4, -1, 6])
    seen = to_csr([[1, 3, 8], [], [4], [0], [0, 0, 2]])
    np.testing.assert_array_equal(popularity_ranks(targets, seen), [3, 2, MISS_RANK, MISS_RANK, 4])
    np.testing.assert_array_equal(popularity_ranks(targets, None), [5, 2, 4, MISS_RANK, 6])


def test_popularity_ranks_equals_brute_force():
    rng = np.random.default_rng(0)
    n, q = 30, 200
    targets = rng.integers(-1, n, size=q)
    seen = [rng.integers(0, n, size=rng.integers(0, 12)) for _ in range(q)]
    got = popularity_ranks(targets, to_csr(seen))
    for i in range(q):
        ranking = [item for item in range(n) if item not in set(seen[i].tolist())]
        want = ranking.index(targets[i]) if targets[i] in ranking else MISS_RANK
        assert got[i] == want, i


def test_filtered_and_unfiltered_differ():
    # Item i scores i for the query [1]: unfiltered ranking 4, 3, 2, 1, 0.
    # q0 has seen {4, 3}, target 2: filtered rank 0 (hit@1), unfiltered rank 2 (miss@1, hit@3).
    # q1 has seen nothing, target 4: rank 0 in both.
    # q2 target -1 (OOV): a miss in both, but it stays in the denominator.
    index = build_index(np.arange(5, dtype=np.float32)[:, None])
    queries = np.ones((3, 1), np.float32)
    targets = np.array([2, 4, -1])
    seen = to_csr([[4, 3], [], [1]])
    res = evaluate_queries(index, queries, targets, seen, ks=[1, 3])
    assert res["filtered"]["hr@1"] == pytest.approx(2 / 3)
    assert res["unfiltered"]["hr@1"] == pytest.approx(1 / 3)
    assert res["unfiltered"]["hr@3"] == pytest.approx(2 / 3)
    # ndcg@3 unfiltered = (1/log2(4) + 1) / 3 = 0.5
    assert res["unfiltered"]["ndcg@3"] == pytest.approx(0.5)
    assert res["filtered"]["count"] == res["unfiltered"]["count"] == 3

    pop = evaluate_popularity(targets, seen, ks=[1, 3])
    # Popularity order 0, 1, 2, ...: q0 filtered rank 2 (nothing below 2 excluded), q1 rank 4.
    assert pop["filtered"]["hr@3"] == pytest.approx(1 / 3)
    assert pop["unfiltered"]["hr@1"] == 0.0


def test_format_table():
    model = {
        "filtered": {"hr@10": 0.123456, "ndcg@10": 0.05},
        "unfiltered": {"hr@10": 0.1, "ndcg@10": 0.04},
    }
    table = format_table({"model": model, "most-popular": {"filtered": model["filtered"]}}, [10])
    lines = table.splitlines()
    assert lines[0].split() == ["HR@10", "NDCG@10"]
    assert lines[1].split() == ["model", "filtered", "0.1235", "0.0500"]
    assert lines[2].startswith("model unfiltered")
    assert lines[3].split() == ["most-popular", "filtered", "0.1235", "0.0500"]


def test_recall_at_k_equals_hr_at_k_with_one_held_out_item():
    # Ranks 0, 4, 12 (a miss at depth 12): recall@5 = 2/3 (one relevant item per query), = hr@5.
    m = ranking_metrics(np.array([0, 4, 12]), [1, 5, 10])
    assert m["recall@5"] == pytest.approx(2 / 3)
    for k in (1, 5, 10):
        assert m[f"recall@{k}"] == m[f"hr@{k}"]


def test_coverage_hand_computed():
    # Catalogue of 10 items, 3 queries, depth 3:
    #   top-1 of every query: {0, 0, 5}          -> 2 items -> 0.2
    #   top-2: {0, 1} | {0, 3} | {5, -1 pad}     -> {0, 1, 3, 5} -> 0.4
    #   top-3: adds 2, 1 (again) and a pad       -> {0, 1, 2, 3, 5} -> 0.5
    topk = np.array([[0, 1, 2], [0, 3, 1], [5, -1, -1]])
    assert coverage(topk, 10, [1, 2, 3]) == pytest.approx(
        {"coverage@1": 0.2, "coverage@2": 0.4, "coverage@3": 0.5}
    )
    with pytest.raises(ValueError, match=r"\[Q, >= 4\]"):
        coverage(topk, 10, [4])


def test_popularity_boundaries_hand_computed():
    # Counts 5, 3, 1, 1 (total 10); cumulative shares 0.5, 0.8, 0.9, 1.0.
    # Item 0: 0.5 <= 0.5 -> head (the boundary is inclusive); item 1: 0.8 <= 0.8 -> torso;
    # items 2, 3 -> tail. So head = [0, 1), torso = [1, 2), tail = [2, 4).
    assert popularity_boundaries(np.array([5, 3, 1, 1])) == (1, 2)
    # One item holding 60% is beyond the 50% line, so the head is empty: shares 0.6, 0.8, 1.0.
    assert popularity_boundaries(np.array([6, 2, 2])) == (0, 2)
    # 0.29 * 100 is 28.999999999999996 in floats; the 29th cumulative unit must still count.
    assert popularity_boundaries(np.array([29] + [1] * 71), head=0.29, torso=0.3) == (1, 2)
    with pytest.raises(ValueError, match="non-increasing"):
        popularity_boundaries(np.array([1, 3, 2]))


def test_popularity_buckets_and_per_bucket_hr_hand_computed():
    # Counts 4, 3, 1, 1, 1 (total 10): shares 0.4, 0.7, 0.8, 0.9, 1.0
    #   -> head = {0}, torso = {1, 2}, tail = {3, 4}.
    counts = np.array([4, 3, 1, 1, 1])
    targets = np.array([0, 0, 1, 2, 4, 3, -1])
    np.testing.assert_array_equal(popularity_buckets(targets, (1, 3)), [0, 0, 1, 1, 2, 2, 3])
    # ranks:            0 (hit@1), 3 (miss@2), 1 (hit@2), 5 (miss), 0 (hit@1), 2 (miss@2), OOV miss
    ranks = np.array([0, 3, 1, 5, 0, 2, 5])
    by = metrics_by_popularity(ranks, targets, counts, [1, 2])
    assert list(by) == ["head", "torso", "tail", "oov"]
    assert [by[b]["count"] for b in by] == [2, 2, 2, 1]
    assert [by[b]["items"] for b in by] == [1, 2, 2, 0]
    # head: ranks 0, 3 -> hr@1 = hr@2 = 1/2; torso: ranks 1, 5 -> hr@1 = 0, hr@2 = 1/2;
    # tail: ranks 0, 2 -> hr@1 = hr@2 = 1/2; oov: 0.
    assert [by[b]["hr@1"] for b in by] == pytest.approx([0.5, 0.0, 0.5, 0.0])
    assert [by[b]["hr@2"] for b in by] == pytest.approx([0.5, 0.5, 0.5, 0.0])
    # Weighted by counts, the buckets give back the overall hit rate (3/7 at K = 2).
    overall = ranking_metrics(ranks, [2])["hr@2"]
    assert sum(by[b]["hr@2"] * by[b]["count"] for b in by) / len(ranks) == pytest.approx(overall)


def test_evaluate_queries_adds_coverage_and_popularity_buckets():
    # Item i scores i for the query [1]: ranking 4, 3, 2, 1, 0 (as in the test above).
    # Counts 4, 3, 1, 1, 1 -> head {0}, torso {1, 2}, tail {3, 4}.
    # q0 seen {4, 3}, target 2 (torso): filtered top-2 = 2, 1 -> hit@1.
    # q1 seen {}, target 4 (tail): top-2 = 4, 3 -> hit@1.
    # q2 seen {1}, target 0 (head): top-2 = 4, 3 -> miss.
    index = build_index(np.arange(5, dtype=np.float32)[:, None])
    queries = np.ones((3, 1), np.float32)
    targets = np.array([2, 4, 0])
    seen = to_csr([[4, 3], [], [1]])
    counts = np.array([4, 3, 1, 1, 1])
    res = evaluate_queries(index, queries, targets, seen, ks=[1, 2], item_counts=counts)
    # Filtered top-1 items {2, 4} -> 2/5; top-2 {2, 1, 4, 3} -> 4/5. Unfiltered: {4}, {4, 3}.
    assert res["filtered"]["coverage@1"] == pytest.approx(0.4)
    assert res["filtered"]["coverage@2"] == pytest.approx(0.8)
    assert res["unfiltered"]["coverage@2"] == pytest.approx(0.4)
    assert res["filtered"]["recall@1"] == res["filtered"]["hr@1"] == pytest.approx(2 / 3)
    by = res["by_popularity"]
    assert {b: (by[b]["count"], by[b]["hr@1"]) for b in by} == {
        "head": (1, 0.0), "torso": (1, 1.0), "tail": (1, 1.0), "oov": (0, 0.0)}
    # Without item counts the result keeps its old shape.
    assert set(evaluate_queries(index, queries, targets, seen, ks=[1])) == {"filtered", "unfiltered"}

    pop = evaluate_popularity(targets, seen, ks=[1, 2], item_counts=counts)
    # Popularity order 0, 1, 2, ...: q2 (seen {1}) has target 0 at rank 0 -> the head hit.
    assert pop["by_popularity"]["head"]["hr@1"] == 1.0
    assert pop["by_popularity"]["tail"]["hr@2"] == 0.0
    assert "coverage@1" not in pop["filtered"]
    # format_table ignores entries that are not variants.
    assert len(format_table({"model": {**res, "seconds": 1.0}}, [1]).splitlines()) == 3
