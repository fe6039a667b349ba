"""Categorical user side features → integer codes (0 = unknown), with what serving needs to repeat it.

The transformation from a raw value to a code is the one the exported tower repeats in TensorFlow
(recall/bundle.py `ServingTower`), so a client sends raw values:

    raw value ──► value[:prefix] (characters; only for features with a prefix, e.g. zip_code: 2)
              ──► code = 1 + position in the feature's sorted vocabulary; "" and values outside it → 0

The vocabulary is the set of (prefixed) non-empty values of the training users; code 0 ("unknown")
is what users absent from the table and missing values were trained with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recall.errors import RecallError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserFeatures:
    """F categorical features for U users.

    names     [F] column names
    vocabs    F arrays of str (sorted); code c ≥ 1 ↔ vocabs[f][c - 1], code 0 = unknown/missing
    codes     int32 [U, F] aligned with Split.user_ids
    prefixes  [F] characters kept of each raw value before the lookup, None = the whole value
              (empty list: no prefix anywhere)
    raw       str [U, F] the users' raw values as read ("" = missing), before any prefix; None when
              the codes were built from already-transformed values
    """

    names: list[str]
    vocabs: list[np.ndarray]
    codes: np.ndarray
    prefixes: list[int | None] = field(default_factory=list)
    raw: np.ndarray | None = None

    @property
    def sizes(self) -> list[int]:
        return [len(v) for v in self.vocabs]

    def prefix(self, i: int) -> int | None:
        return self.prefixes[i] if self.prefixes else None

    def transform(self, name: str, values) -> np.ndarray:
        """Raw values [R] of feature `name` → the str values [R] looked up (prefix applied)."""
        return apply_prefix(np.asarray(values).astype(str), self.prefix(self.names.index(name)))

    def lookup(self, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw string values per feature (each [R]) → (int32 codes [R, F], bool unknown [R, F]).

        unknown: a non-empty value whose (prefixed) form is not in the vocabulary; it gets code 0.
        """
        cols, unknown = [], []
        for name, vocab in zip(self.names, self.vocabs, strict=True):
            raw = np.asarray(values[name]).astype(str)
            key = self.transform(name, raw)
            pos = np.searchsorted(vocab, key).clip(0, max(len(vocab) - 1, 0))
            found = (vocab[pos] == key) if len(vocab) else np.zeros(len(key), bool)
            cols.append(np.where(found, pos + 1, 0))
            unknown.append(~found & (raw != ""))
        if not cols:
            return np.zeros((0, 0), np.int32), np.zeros((0, 0), bool)
        return np.stack(cols, axis=1).astype(np.int32), np.stack(unknown, axis=1)

    def encode(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Raw string values per feature (each [R]) → int32 codes [R, F]; unseen values → 0."""
        return self.lookup(values)[0]


def apply_prefix(values: np.ndarray, n: int | None) -> np.ndarray:
    """The first `n` characters (Unicode code points) of each str value [R]; all of it when n is None."""
    values = np.asarray(values).astype(str)
    if n is None or len(values) == 0:
        return values
    return pd.Series(values, dtype=object).str.slice(0, n).to_numpy().astype(str)


def check_prefix(prefix: dict[str, int] | None, columns: list[str]) -> None:
    """`data.user_features.prefix` must name feature columns, each with n ≥ 1."""
    for c, n in (prefix or {}).items():
        if c not in columns:
            raise RecallError(f"data.user_features.prefix.{c}: {c!r} is not one of the feature columns {columns}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise RecallError(f"data.user_features.prefix.{c}: must be at least 1 (got {n})")


def empty_features(num_users: int) -> UserFeatures:
    return UserFeatures(names=[], vocabs=[], codes=np.zeros((num_users, 0), dtype=np.int32),
                        raw=np.zeros((num_users, 0), dtype=str))


def encode_user_features(table: pd.DataFrame, user_ids: np.ndarray, source: str = "user features",
                         prefix: dict[str, int] | None = None) -> UserFeatures:
    """Codes for `user_ids` [U] from `table` (indexed by raw user id, one str column per raw feature).

    `prefix` keeps the first n characters of a column before the lookup (e.g. {"zip_code": 2}); the
    raw values are kept too (`UserFeatures.raw`), so the export can replay them as a client sends them.
    Users absent from the table get code 0 (unknown) with a warning; when none of them is in the table
    (usually a key column or id type that does not match the interactions) it is a RecallError naming `source`.
    """
    names = list(table.columns)
    check_prefix(prefix, names)
    known = pd.Index(user_ids).isin(table.index)
    missing = int((~known).sum())
    if len(user_ids) and missing == len(user_ids):
        ours, theirs = (np.asarray(x[:1]).tolist() for x in (user_ids, table.index))  # plain ints/strs for repr
        raise RecallError(
            f"{source}: none of the {len(user_ids)} users of the interactions is in this table (users look like "
            f"{ours}, its ids like {theirs}); check data.user_features.key names a column holding the same ids "
            "as the interactions' user column"
        )
    if missing:
        log.warning("%s: %d of %d users are not in the feature table; their features are 'unknown'",
                    source, missing, len(user_ids))
    aligned = table.reindex(pd.Index(user_ids))
    prefixes = [(prefix or {}).get(name) for name in names]
    raw = {name: aligned[name].fillna("").astype(str).to_numpy().astype(str) for name in names}
    vocabs = [np.array(sorted(set(apply_prefix(raw[name], n)) - {""}), dtype=str)
              for name, n in zip(names, prefixes, strict=True)]
    feats = UserFeatures(names=names, vocabs=vocabs, codes=np.zeros((len(user_ids), len(names)), np.int32),
                         prefixes=prefixes if any(p is not None for p in prefixes) else [],
                         raw=np.stack([raw[n] for n in names], axis=1) if names else
                         np.zeros((len(user_ids), 0), dtype=str))
    if not names:
        return feats
    return UserFeatures(names=names, vocabs=vocabs, codes=feats.encode(raw), prefixes=feats.prefixes, raw=feats.raw)
