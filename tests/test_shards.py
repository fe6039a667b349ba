"""data.shard_by_user without a cluster: users → workers, the agreed vocabulary, counts that add up.

The workers' collectives are played by threads of this process (`ThreadExchange`: the same sum and
gather the strategy's collectives give, distributed/collect.py), so every worker-side function runs
as it does in a job; tests/test_distributed.py runs a real 2-worker job.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from recall.data.readers import read_interactions
from recall.data.shards import keep_users, merged_vocabulary, user_worker
from recall.data.split import build_vocabulary
from recall.distributed.collect import Exchange, decode_text, encode_text
from recall.errors import RecallError
from recall.evaluation.protocol import counts_metrics, merge_counts, popularity_counts, query_counts
from recall.index import build_index
from recall.training.loop import shard_epoch_order


class _Hub:
    def __init__(self, n: int):
        self.barrier = threading.Barrier(n, timeout=30)
        self.slots = [None] * n


class ThreadExchange(Exchange):
    """Worker `index` of `num_workers` threads sharing a hub: each call is a collective of them all."""

    def __init__(self, hub: _Hub, index: int):
        self.hub, self.index, self.num_workers = hub, index, len(hub.slots)

    def _swap(self, values: np.ndarray) -> list[np.ndarray]:
        self.hub.slots[self.index] = values
        self.hub.barrier.wait()
        out = list(self.hub.slots)
        self.hub.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out

    def sum(self, values):
        return np.sum(self._swap(np.asarray(values, np.int64).reshape(-1)), axis=0)

    def gather(self, values):
        return np.concatenate(self._swap(np.asarray(values, np.int64).reshape(-1)))


def run_workers(n: int, fn) -> list:
    """fn(exchange) on n threads at once → their results in worker order (the first error re-raised)."""
    hub, results, errors = _Hub(n), [None] * n, []

    def run(i):
        try:
            results[i] = fn(ThreadExchange(hub, i))
        except BaseException as err:  # noqa: BLE001 (re-raised below, in the test's thread)
            errors.append(err)
            hub.barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_user_worker_is_a_fixed_partition_of_the_string_form():
    ids = np.arange(1, 2001)
    w = user_worker(ids, 3)
    assert set(np.unique(w)) == {0, 1, 2} and np.bincount(w).min() > 600  # every user on one worker, balanced
    np.testing.assert_array_equal(w, user_worker(ids.astype(str), 3))  # 42 and "42": the same worker
    # Pinned: a change of hash would move every user of a resumed job to another worker.
    assert user_worker(np.array([1, 42, 7, 1000, 99, 5]), 4).tolist() == [0, 1, 2, 2, 1, 1]
    keep = keep_users(1, 3)
    rows = np.array([5, 5, 9, 12, 5])
    np.testing.assert_array_equal(keep(rows), user_worker(rows, 3) == 1)


def test_summed_counts_give_the_single_process_vocabulary():
    rng = np.random.default_rng(0)
    items = rng.zipf(1.5, 3000) % 200  # many ties among the rare ones: broken by raw id
    owner = rng.integers(0, 3, 3000)
    parts = [np.unique(items[owner == w], return_counts=True) for w in range(3)]
    ids, counts = merged_vocabulary(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    want_ids, want_counts = build_vocabulary(items)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(counts, want_counts)


def test_text_travels_packed_in_int64():
    values = np.array(["a", "", "movie:é7", "x" * 13])
    blob, lengths = encode_text(values)
    assert blob.dtype == np.int64 and len(blob) == 3  # 1 + 0 + 9 + 13 = 23 bytes → 3 words
    np.testing.assert_array_equal(decode_text(blob, lengths), values)


def _log(users: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for _t in range(int(rng.integers(2, 12))):
            rows.append((f"u{u}", f"i{int(rng.zipf(1.3)) % 60}", 1000 * u + int(rng.integers(0, 10**6))))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).drop_duplicates(
        ["user_id", "item_id", "timestamp"])


def test_workers_prepare_their_users_in_the_job_vocabulary(tmp_path):
    import recall
    from recall.pipeline import prepare_data

    df = _log()
    path = tmp_path / "log.parquet"
    df.to_parquet(path)
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(120)], "zone": [f"z{u % 7}" for u in range(120)]})
    users.to_parquet(tmp_path / "users.parquet")
    cfg = recall.load_config(None, ["data.source=file", f"data.path={path}", "data.shard_by_user=true",
                                    f"data.user_features.path={tmp_path / 'users.parquet'}", "model.max_history=5"])
    whole = prepare_data(cfg)  # one process: every user
    shards = run_workers(2, lambda ex: prepare_data(cfg, ex))
    s = whole.split
    owner = user_worker(s.user_ids, 2)
    for w, data in enumerate(shards):
        np.testing.assert_array_equal(data.split.item_ids, s.item_ids)  # the same vocabulary everywhere
        np.testing.assert_array_equal(data.split.item_counts, s.item_counts)
        mine = np.flatnonzero(owner == w)
        np.testing.assert_array_equal(data.split.user_ids, s.user_ids[mine])  # only its users, in order
        np.testing.assert_array_equal(data.test.targets, whole.test.targets[mine])
        np.testing.assert_array_equal(data.valid.history, whole.valid.history[mine])
        np.testing.assert_array_equal(data.valid.age, whole.valid.age[mine])  # ages in the job's time span
        assert [v.tolist() for v in data.features.vocabs] == [v.tolist() for v in whole.features.vocabs]
        np.testing.assert_array_equal(data.features.codes, whole.features.codes[mine])
        ex = data.examples
        users_of = np.isin(whole.examples.user, mine)
        np.testing.assert_array_equal(ex.age, whole.examples.age[users_of])
        np.testing.assert_array_equal(data.split.train_items[ex.label_pos],
                                      s.train_items[whole.examples.label_pos[users_of]])
    table = shards[0].workers
    assert (shards[1].workers == table).all()
    assert table[:, 0].tolist() == np.bincount(owner).tolist()
    assert table.sum(axis=0).tolist() == [s.num_users, int(s.train_indptr[-1]), len(whole.examples)]


def test_a_worker_without_users_is_one_error_on_every_worker(tmp_path):
    import recall
    from recall.pipeline import prepare_data

    df = _log(users=3)
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    cfg = recall.load_config(None, ["data.source=file", f"data.path={path}", "data.shard_by_user=true"])
    with pytest.raises(RecallError, match="data.shard_by_user: worker .* holds none of the 3 users"):
        run_workers(8, lambda ex: prepare_data(cfg, ex))


def test_a_folder_of_parquet_shards_reads_as_one_log_and_filters_by_user(tmp_path):
    df = _log()
    whole = tmp_path / "log.parquet"
    df.to_parquet(whole)
    folder = tmp_path / "shards"
    (folder / "day=2").mkdir(parents=True)
    shuffled = df.sample(frac=1, random_state=0)
    for i, rows in enumerate(np.array_split(np.arange(len(df)), 3)):
        shuffled.iloc[rows].to_parquet(folder / ("day=2" if i == 2 else ".") / f"part-{i}.parquet")
    (folder / "_SUCCESS").write_text("")
    key = ["user_id", "timestamp", "item_id"]
    one = read_interactions(whole).sort_values(key).reset_index(drop=True)
    np.testing.assert_array_equal(read_interactions(folder).sort_values(key).to_numpy(), one.to_numpy())
    mine = read_interactions(folder, keep_users=keep_users(1, 2))
    assert set(mine.user_id) == set(one.user_id[user_worker(one.user_id.to_numpy(), 2) == 1])
    assert len(mine) == int((user_worker(one.user_id.to_numpy(), 2) == 1).sum())
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecallError, match="no Parquet shards"):
        read_interactions(tmp_path / "empty")


def test_evaluation_counts_of_disjoint_users_add_up_to_the_whole():
    rng = np.random.default_rng(1)
    n, q, ks = 40, 90, [1, 5, 10]
    index = build_index(rng.normal(size=(n, 4)).astype(np.float32))
    queries = rng.normal(size=(q, 4)).astype(np.float32)
    targets = rng.integers(-1, n, q)
    lengths = rng.integers(0, 6, q)
    seen = (np.r_[0, np.cumsum(lengths)].astype(np.int64), rng.integers(0, n, lengths.sum()).astype(np.int64))
    item_counts = np.sort(rng.integers(1, 50, n))[::-1]
    owner = rng.integers(0, 3, q)

    def part(rows):
        starts, ends = seen[0][rows], seen[0][rows + 1]
        sub = (np.r_[0, np.cumsum(ends - starts)].astype(np.int64),
               np.concatenate([seen[1][a:b] for a, b in zip(starts, ends)]))
        return rows, sub

    whole = query_counts(index, queries, targets, seen, ks, item_counts=item_counts)
    parts = [part(np.flatnonzero(owner == w)) for w in range(3)]
    merged = merge_counts([query_counts(index, queries[r], targets[r], s, ks, item_counts=item_counts)
                           for r, s in parts])
    assert counts_metrics(merged, ks, item_counts) == counts_metrics(whole, ks, item_counts)  # exactly
    pop = merge_counts([popularity_counts(targets[r], s, ks, item_counts) for r, s in parts])
    assert counts_metrics(pop, ks, item_counts) == counts_metrics(popularity_counts(targets, seen, ks, item_counts),
                                                                  ks, item_counts)


def test_a_sharded_epoch_order_is_keyed_on_the_worker_and_wraps_around():
    a = shard_epoch_order(10, seed=3, epoch=1, worker=0, length=12)
    assert sorted(a[:10].tolist()) == list(range(10)) and a[10:].tolist() == a[:2].tolist()
    np.testing.assert_array_equal(a, shard_epoch_order(10, 3, 1, 0, 12))
    assert a[:10].tolist() != shard_epoch_order(10, 3, 1, 1, 10).tolist()
    assert shard_epoch_order(4, 3, 1, 0, 6, shuffle=False).tolist() == [0, 1, 2, 3, 0, 1]
