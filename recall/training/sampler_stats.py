"""How far a sampler's proposal Q is from the training item frequency P — for the run report.

A sampled softmax with log Q correction is unbiased in the limit whatever Q is, but its variance
grows as Q drifts from the items that matter. KL(P‖Q) tells a user when, e.g., log-uniform does
not fit their catalogue's popularity curve.
"""

from __future__ import annotations

import numpy as np


def proposal(kind: str, item_counts: np.ndarray, distortion: float = 1.0, base: str | None = None,
             batch_size: int = 1, num_sampled: int = 0) -> np.ndarray:
    """Q [N]: the probability that one candidate draw of sampler `kind` is item i (ids frequency-sorted)."""
    counts = np.asarray(item_counts, dtype=np.float64)
    n = len(counts)
    if kind == "log_uniform":
        ids = np.arange(n, dtype=np.float64)
        return np.log((ids + 2.0) / (ids + 1.0)) / np.log(n + 1.0)
    if kind == "uniform":
        return np.full(n, 1.0 / n)
    if kind == "unigram":
        w = counts**distortion
        return w / w.sum()
    if kind in ("learned_unigram", "in_batch"):
        # learned_unigram converges to the label frequency; in-batch draws are labels.
        return counts / counts.sum()
    if kind == "mixed":
        if base is None:
            raise ValueError("mixed needs its base sampler")
        p = counts / counts.sum()
        q = proposal(base, counts, distortion)
        return (batch_size * p + num_sampled * q) / (batch_size + num_sampled)
    raise ValueError(f"unknown sampler {kind!r}")


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p‖q) in nats over the support of p."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-300)))))


def sampler_report(kind: str, item_counts: np.ndarray, **kwargs) -> dict:
    """{"sampler", "kl_train_vs_q", "q_top1pct_mass", "p_top1pct_mass"} for metrics.json and report.md."""
    counts = np.asarray(item_counts, dtype=np.float64)
    p = counts / counts.sum()
    q = proposal(kind, counts, **kwargs)
    top = max(1, len(counts) // 100)
    return {
        "sampler": kind,
        "kl_train_vs_q": round(kl_divergence(p, q), 4),
        "p_top1pct_mass": round(float(np.sort(p)[::-1][:top].sum()), 4),
        "q_top1pct_mass": round(float(np.sort(q)[::-1][:top].sum()), 4),
    }
