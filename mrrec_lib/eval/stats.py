"""Uncertainty for per-query metrics: bootstrap confidence intervals and paired tests.

The offline benchmark has a few hundred queries, so every reported mean carries
a percentile-bootstrap interval, and system comparisons are paired by query
(the same query's difficulty cancels out). Resampling is vectorised in chunks
so 10k bootstrap draws over 10k queries stay within ~100 MB.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

_MAX_CELLS = 4_000_000  # resampled values held at once


def _values(x: np.ndarray | list, what: str = "values") -> np.ndarray:
    v = np.asarray(x, dtype=float).reshape(-1)
    if np.isnan(v).any():
        raise ValueError(f"{what} contain NaN: drop or score those queries before computing statistics")
    return v


def _chunks(n_boot: int, n: int) -> Iterator[int]:
    step = max(1, _MAX_CELLS // max(n, 1))
    for s in range(0, n_boot, step):
        yield min(step, n_boot - s)


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement) of `values`."""
    out = [values[rng.integers(0, len(values), size=(b, len(values)))].mean(axis=1) for b in _chunks(n_boot, len(values))]
    return np.concatenate(out) if out else np.empty(0)


def bootstrap_ci(values: np.ndarray | list, n_boot: int, seed: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and its percentile-bootstrap (1 - alpha) interval; NaNs for no values."""
    v = _values(values)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    means = bootstrap_means(v, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def paired_test(a: np.ndarray | list, b: np.ndarray | list, n_boot: int, seed: int, alpha: float = 0.05) -> dict[str, float]:
    """Is mean(a - b) != 0 over the same queries?

    diff, its paired percentile-bootstrap CI (lo, hi), a two-sided bootstrap p-value (the centred bootstrap
    distribution reaching |diff|) and a two-sided sign-flip permutation p-value (exact null: a and b exchangeable
    within each query). Both p-values use the (1 + count) / (1 + draws) correction, so never 0.
    """
    x, y = _values(a, "a"), _values(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired_test needs equal lengths, got {len(x)} and {len(y)}")
    nan = float("nan")
    if len(x) == 0:
        return {"diff": nan, "lo": nan, "hi": nan, "p_bootstrap": nan, "p_permutation": nan}
    d = x - y
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    boot = bootstrap_means(d, n_boot, rng)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    tol = 1e-12 * max(1.0, abs(diff))  # float noise must not turn an exact tie into a miss
    p_boot = (1 + np.sum(np.abs(boot - diff) >= abs(diff) - tol)) / (1 + n_boot)
    null = np.concatenate(
        [(d * rng.choice(np.array([-1.0, 1.0]), size=(m, len(d)))).mean(axis=1) for m in _chunks(n_boot, len(d))]
    )
    p_perm = (1 + np.sum(np.abs(null) >= abs(diff) - tol)) / (1 + n_boot)
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "p_bootstrap": float(p_boot), "p_permutation": float(p_perm)}


def summarise(metrics: Mapping[str, np.ndarray | list], n_boot: int, seed: int, alpha: float = 0.05) -> pd.DataFrame:
    """One row per metric: metric, mean, lo, hi, n (every metric resampled with the same seed)."""
    rows = []
    for name, values in metrics.items():
        mean, lo, hi = bootstrap_ci(values, n_boot, seed, alpha)
        rows.append({"metric": name, "mean": mean, "lo": lo, "hi": hi, "n": int(np.asarray(values).size)})
    return pd.DataFrame(rows, columns=["metric", "mean", "lo", "hi", "n"])
