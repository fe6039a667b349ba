"""Categorical user side features → integer codes (0 = unknown), with the vocabularies serving needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recall.errors import RecallError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserFeatures:
    """F categorical features for U users.

    names   [F] column names
    vocabs  F arrays of str; code c ≥ 1 ↔ vocabs[f][c - 1], code 0 = unknown/missing
    codes   int32 [U, F] aligned with Split.user_ids
    """

    names: list[str]
    vocabs: list[np.ndarray]
    codes: np.ndarray

    @property
    def sizes(self) -> list[int]:
        return [len(v) for v in self.vocabs]

    def encode(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Raw string values per feature (each [R]) → int32 codes [R, F]; unseen values → 0."""
        cols = []
        for name, vocab in zip(self.names, self.vocabs, strict=True):
            raw = np.asarray(values[name]).astype(str)
            pos = np.searchsorted(vocab, raw).clip(0, max(len(vocab) - 1, 0))
            found = (vocab[pos] == raw) if len(vocab) else np.zeros(len(raw), bool)
            cols.append(np.where(found, pos + 1, 0))
        return np.stack(cols, axis=1).astype(np.int32) if cols else np.zeros((0, 0), np.int32)


def empty_features(num_users: int) -> UserFeatures:
    return UserFeatures(names=[], vocabs=[], codes=np.zeros((num_users, 0), dtype=np.int32))


def encode_user_features(table: pd.DataFrame, user_ids: np.ndarray, source: str = "user features") -> UserFeatures:
    """Codes for `user_ids` [U] from `table` (indexed by raw user id, one str column per feature).

    Users absent from the table get code 0 (unknown) with a warning; when none of them is in the table
    (usually a key column or id type that does not match the interactions) it is a RecallError naming `source`.
    """
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
    names = list(table.columns)
    vocabs = []
    for name in names:
        present = aligned[name].dropna().astype(str)
        vocabs.append(np.array(sorted(set(present) - {""}), dtype=str))
    feats = UserFeatures(names=names, vocabs=vocabs, codes=np.zeros((len(user_ids), len(names)), np.int32))
    values = {name: aligned[name].fillna("").astype(str).to_numpy() for name in names}
    return UserFeatures(names=names, vocabs=vocabs, codes=feats.encode(values) if names else feats.codes)
