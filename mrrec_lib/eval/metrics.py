"""Per-query ranking metrics for a single relevant item (MR.Rec's protocol).

Ranks are 1-based over the whole pool; np.inf means "not retrieved". Metrics are
returned per query (not averaged) so that confidence intervals and paired tests
can be computed on them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _ranks(ranks: Iterable[float] | np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=float).reshape(-1)
    bad = np.isnan(r) | (r < 1)
    if bad.any():
        raise ValueError(f"ranks must be >= 1 (1-based) or inf, got e.g. {r[bad][:5].tolist()}")
    return r


def recall_at_k(ranks: Iterable[float] | np.ndarray, k: int) -> np.ndarray:
    """1.0 where the target is within the top k, else 0.0."""
    return (_ranks(ranks) <= k).astype(float)


def ndcg_at_k(ranks: Iterable[float] | np.ndarray, k: int) -> np.ndarray:
    """1 / log2(rank + 1) within the top k, else 0 (the ideal DCG of one relevant item is 1)."""
    r = _ranks(ranks)
    out = np.zeros_like(r)
    hit = r <= k
    out[hit] = 1.0 / np.log2(r[hit] + 1.0)
    return out


def metrics_from_ranks(
    ranks: Iterable[float] | np.ndarray, ks: Iterable[int] = (10, 100, 1000)
) -> dict[str, np.ndarray]:
    """{"R@k": per-query recall, "N@k": per-query nDCG} for every k."""
    r = _ranks(ranks)
    ks = list(ks)
    return {**{f"R@{k}": recall_at_k(r, k) for k in ks}, **{f"N@{k}": ndcg_at_k(r, k) for k in ks}}
