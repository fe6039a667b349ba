"""A synthetic interaction generator that a sequence-aware retrieval model can learn, at any size.

The world behind it (`item_catalogue` returns its ground truth):
- every item has one topic (topics are balanced) and a Zipf popularity weight ∝ rank^-exponent,
  with ranks shuffled over item ids so an id says nothing about popularity;
- every user has a Dirichlet(taste_concentration) mix over topics (small α: a few favourite topics);
- a user's sequence is a Markov walk over topics: keep the current topic with probability
  1 - drift, otherwise draw a new one from the user's mix; each step picks an item of the current
  topic by popularity, never one the user already has while the topic has unseen items left.

So the next item is predictable from the topic of the last few items, and a model that reads the
history beats most-popular clearly. Sequence lengths are 3 + lognormal (mean interactions_per_user).
Everything is vectorised over interactions — no Python loop per row — so 10M rows take seconds.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from recall.errors import RecallError

log = logging.getLogger(__name__)

_EPOCH = 1_500_000_000  # 2017-07-14: timestamps look like real Unix seconds
_START_SPAN = 2 * 365 * 86_400  # users start uniformly within two years
_MEAN_GAP = 3_600  # seconds between a user's consecutive interactions, on average
_LENGTH_SIGMA = 1.0  # lognormal spread of sequence lengths
# Redraw phases for an item the user already has: (where to draw from, rounds). The topic's
# popularity first, then the topic uniformly, then the whole catalogue; see `_redraw_repeats`.
_PHASES = (("topic", 8), ("topic_uniform", 6), ("catalogue", 6), ("catalogue_uniform", 10))


def item_catalogue(
    num_items: int = 1000, num_topics: int = 20, popularity_exponent: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The items `synthesize` draws from with the same arguments.

    Returns (topic [num_items] int64 in [0, min(num_topics, num_items)), popularity [num_items]
    float64 summing to 1), indexed by item id.
    """
    rng = np.random.default_rng([seed, 0])  # its own stream: independent of the user draws
    rank = rng.permutation(num_items) + 1
    popularity = rank.astype(np.float64) ** -popularity_exponent
    popularity /= popularity.sum()
    topic = rng.permutation(num_items) % min(num_topics, num_items)
    return topic.astype(np.int64), popularity


def synthesize(
    num_users: int = 2000,
    num_items: int = 1000,
    interactions_per_user: float = 30.0,
    num_topics: int = 20,
    popularity_exponent: float = 1.0,
    taste_concentration: float = 0.3,
    drift: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """Interactions with columns user_id, item_id, timestamp (all int64), sorted by user then time.

    Same arguments → identical frame. Timestamps strictly increase along each user's sequence.
    """
    _check(num_users, num_items, interactions_per_user, num_topics, taste_concentration, drift, seed)
    topic_of, popularity = item_catalogue(num_items, num_topics, popularity_exponent, seed)
    num_topics = int(topic_of.max()) + 1
    rng = np.random.default_rng([seed, 1])

    lengths = _lengths(rng, num_users, interactions_per_user, cap=max(3, num_items // 2))
    user = np.repeat(np.arange(num_users, dtype=np.int64), lengths)  # [M]
    first = np.zeros(num_users, dtype=np.int64)
    first[1:] = np.cumsum(lengths)[:-1]  # position of each user's first interaction

    # Topic walk: a new topic at each user's first step and with probability `drift` afterwards;
    # every other step copies the latest draw (cumsum of the switch flags indexes it).
    taste = rng.dirichlet(np.full(num_topics, taste_concentration), size=num_users)  # [U, T]
    switch = rng.random(len(user)) < drift
    switch[first] = True
    drawn = _categorical_rows(rng, taste, user[switch])
    topic = drawn[np.cumsum(switch) - 1]  # [M]

    cat = _Catalogue(topic_of, popularity)
    item = cat.draw(rng, topic, "topic")
    keep = _redraw_repeats(rng, cat, user, topic, item, num_items)

    gaps = 1 + rng.exponential(_MEAN_GAP, len(user)).astype(np.int64)  # ≥ 1 s: strictly increasing
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first] - gaps[first], lengths)  # restart the clock per user
    start = _EPOCH + rng.integers(0, _START_SPAN, num_users)
    timestamp = start[user] + elapsed

    df = pd.DataFrame({"user_id": user[keep], "item_id": item[keep], "timestamp": timestamp[keep]})
    log.info("synthesized %d interactions (%d users, %d items)", len(df), num_users, num_items)
    return df


class _Catalogue:
    """Items grouped by topic, with per-topic popularity CDFs for vectorised inverse-CDF draws."""

    def __init__(self, topic_of: np.ndarray, popularity: np.ndarray):
        self.order = np.argsort(topic_of, kind="stable")  # item ids grouped by topic
        t = topic_of[self.order]
        num_topics = int(t[-1]) + 1
        self.start = np.searchsorted(t, np.arange(num_topics))  # [T] first slot of each topic
        self.count = np.bincount(t, minlength=num_topics)  # [T]
        p = popularity[self.order]
        csum = np.cumsum(p)
        before = (csum[self.start] - p[self.start])[t]
        total = np.add.reduceat(p, self.start)[t]
        # Topic k's CDF lives in (k, k+1]: one sorted array serves every topic's draws.
        self.cdf = t + (csum - before) / total
        self.cdf[self.start + self.count - 1] = np.arange(num_topics) + 1.0
        self.global_cdf = csum / csum[-1]
        self.global_cdf[-1] = 1.0

    def draw(self, rng: np.random.Generator, topic: np.ndarray, where: str) -> np.ndarray:
        """One item id per entry of `topic` [n]."""
        u = rng.random(len(topic))
        if where == "topic":
            slot = np.searchsorted(self.cdf, topic + u, side="right")
            slot = np.minimum(slot, self.start[topic] + self.count[topic] - 1)
        elif where == "topic_uniform":
            slot = self.start[topic] + (u * self.count[topic]).astype(np.int64)
        elif where == "catalogue":
            return np.minimum(np.searchsorted(self.global_cdf, u, side="right"), len(self.order) - 1)
        else:
            return (u * len(self.order)).astype(np.int64)
        return self.order[slot]


def _redraw_repeats(rng, cat: _Catalogue, user, topic, item, num_items: int) -> np.ndarray:
    """Redraw (in place) every item a user already had earlier in their sequence.

    Keys user * num_items + item are kept in one sorted array; a redraw is accepted when its key
    is new, which costs a binary search instead of re-sorting all interactions each round.
    Returns a keep-mask [M]: False only for the rare repeats left after every phase.
    """
    key = user * num_items + item
    order = np.argsort(key, kind="stable")  # stable: the earliest occurrence is the one kept
    sorted_key = key[order]
    repeat = np.zeros(len(key), dtype=bool)
    repeat[1:] = sorted_key[1:] == sorted_key[:-1]
    seen = sorted_key[~repeat]
    pending = np.sort(order[repeat])
    for where, rounds in _PHASES:
        for _ in range(rounds):
            if not len(pending):
                break
            new_item = cat.draw(rng, topic[pending], where)
            new_key = user[pending] * num_items + new_item
            by_key = np.argsort(new_key, kind="stable")
            k = new_key[by_key]
            at = np.searchsorted(seen, k)  # sorted queries: ~40x faster than random ones
            ok = seen[np.minimum(at, len(seen) - 1)] != k
            ok[1:] &= k[1:] != k[:-1]  # two slots of one user drew the same item: keep the first
            accepted = by_key[ok]
            item[pending[accepted]] = new_item[accepted]
            seen = np.insert(seen, at[ok], k[ok])
            pending = np.delete(pending, accepted)
    keep = np.ones(len(key), dtype=bool)
    keep[pending] = False
    if len(pending):
        log.debug("dropped %d repeated interactions that found no unseen item", len(pending))
    return keep


def _lengths(rng: np.random.Generator, num_users: int, mean: float, cap: int) -> np.ndarray:
    """Sequence lengths [U]: 3 + lognormal with mean `mean` - 3, stochastically rounded, ≤ cap."""
    extra = mean - 3.0
    if extra <= 0:
        return np.full(num_users, 3, dtype=np.int64)
    mu = np.log(extra) - _LENGTH_SIGMA**2 / 2
    raw = rng.lognormal(mu, _LENGTH_SIGMA, num_users)
    return np.minimum(3 + np.floor(raw + rng.random(num_users)).astype(np.int64), cap)


def _categorical_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One draw from the distribution probs[r] [U, T] for each r in rows [n] → column ids [n].

    Row r's CDF is shifted into (r, r+1] so a single searchsorted serves all rows at once.
    """
    num_rows, width = probs.shape
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(num_rows)[:, None]).ravel()
    slot = np.searchsorted(flat, rows + rng.random(len(rows)), side="right")
    return np.minimum(slot - rows * width, width - 1)


def _check(num_users, num_items, interactions_per_user, num_topics, taste_concentration, drift, seed):
    problems = [
        (num_users >= 1, "num_users", "must be at least 1"),
        (num_items >= 3, "num_items", "must be at least 3"),
        (interactions_per_user >= 3, "interactions_per_user", "must be at least 3"),
        (num_topics >= 1, "num_topics", "must be at least 1"),
        (taste_concentration > 0, "taste_concentration", "must be positive"),
        (0 <= drift <= 1, "drift", "must be between 0 and 1"),
        (seed >= 0, "seed", "must be non-negative"),
    ]
    for ok, field, rule in problems:
        if not ok:
            raise RecallError(f"data.synthetic.{field}: {rule}; fix the value in the config or on the command line")
