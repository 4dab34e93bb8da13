"""Uncertainty for per-request metrics: user-clustered bootstrap intervals, paired tests, Holm, power.

Several requests of one user share that user's history, memory and tastes, so they are not
independent draws: resampling requests would understate the uncertainty. Intervals and tests
therefore resample USERS (clusters) with replacement and recompute the mean over all their
requests (a cluster bootstrap); the permutation test flips the sign of a whole user's
differences at once. With one request per cluster this is the ordinary bootstrap, which
`bootstrap_ci` and `paired_test` keep for callers without cluster labels. Resampling is
vectorised in chunks so 10k draws over 10k clusters stay within ~100 MB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from statistics import NormalDist

import numpy as np

_MAX_CELLS = 4_000_000  # resampled values held at once


def _values(x: np.ndarray | Sequence[float], what: str = "values") -> np.ndarray:
    v = np.asarray(x, dtype=float).reshape(-1)
    if np.isnan(v).any():
        raise ValueError(f"{what} contain NaN: drop or score those queries before computing statistics")
    return v


def _chunks(n_boot: int, n: int) -> Iterator[int]:
    step = max(1, _MAX_CELLS // max(n, 1))
    for s in range(0, n_boot, step):
        yield min(step, n_boot - s)


def _cluster_sums(values: np.ndarray, clusters: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums of `values` and cluster sizes, clusters in sorted label order."""
    labels = np.asarray(clusters).reshape(-1)
    if len(labels) != len(values):
        raise ValueError(f"{len(values)} values but {len(labels)} cluster labels")
    _, idx = np.unique(labels, return_inverse=True)
    return np.bincount(idx, weights=values), np.bincount(idx).astype(float)


def _resampled_means(sums: np.ndarray, sizes: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means over all requests of `n_boot` resamples of whole clusters (with replacement)."""
    g = len(sums)
    out = []
    for b in _chunks(n_boot, g):
        pick = rng.integers(0, g, size=(b, g))
        out.append(sums[pick].sum(axis=1) / sizes[pick].sum(axis=1))
    return np.concatenate(out) if out else np.empty(0)


def _sign_flip_means(sums: np.ndarray, total: float, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means under the null: each cluster's summed difference keeps or flips its sign with probability 1/2."""
    flips = [
        (sums * rng.choice(np.array([-1.0, 1.0]), size=(m, len(sums)))).sum(axis=1) / total
        for m in _chunks(n_boot, len(sums))
    ]
    return np.concatenate(flips) if flips else np.empty(0)


def cluster_bootstrap_ci(
    values: np.ndarray | Sequence[float],
    clusters: np.ndarray | Sequence,
    n_boot: int,
    seed: int,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean over requests and its percentile interval from resampling clusters; NaNs if empty."""
    v = _values(values)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    sums, sizes = _cluster_sums(v, clusters)
    means = _resampled_means(sums, sizes, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def cluster_se(values: np.ndarray | Sequence[float], clusters: np.ndarray | Sequence) -> float:
    """Cluster-robust standard error of the mean over requests (sandwich form, G/(G-1) small-sample factor).

    SE^2 = G/(G-1) * sum_g (S_g - n_g * mean)^2 / N^2, with S_g the cluster sums, n_g the sizes, N = sum n_g.
    """
    v = _values(values)
    sums, sizes = _cluster_sums(v, clusters)
    g = len(sums)
    if g < 2:
        return float("nan")
    resid = sums - sizes * v.mean()
    return float(np.sqrt(g / (g - 1) * np.sum(resid**2)) / len(v))


def min_detectable_difference(
    diffs: np.ndarray | Sequence[float], clusters: np.ndarray | Sequence, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest true mean difference a two-sided test at `alpha` detects with probability `power`.

    MDD = (z_{1-alpha/2} + z_{power}) * SE, SE the user-clustered standard error of the paired differences
    (`cluster_se`): a non-significant difference smaller than this says little about whether systems differ.
    """
    z = NormalDist().inv_cdf
    return float((z(1 - alpha / 2) + z(power)) * cluster_se(diffs, clusters))


def paired_cluster_test(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    clusters: np.ndarray | Sequence,
    n_boot: int,
    seed: int,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Is mean(a - b) != 0 over the same requests, with requests clustered by user?

    diff; its cluster-bootstrap percentile CI (lo, hi); a two-sided centred-bootstrap p-value (the resampled
    differences, shifted to mean 0, reaching |diff|); a two-sided cluster sign-flip permutation p-value (exact
    null: a and b exchangeable within each user); the clustered SE and the 80%-power MDD; n requests and n
    clusters. Both p-values use (1 + count) / (1 + draws), so never 0.
    """
    x, y = _values(a, "a"), _values(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired test needs equal lengths, got {len(x)} and {len(y)}")
    labels = np.asarray(clusters).reshape(-1)
    n_clusters = len(np.unique(labels))
    nan = float("nan")
    if len(x) == 0:
        keys = ("diff", "lo", "hi", "p_bootstrap", "p_permutation", "se", "mdd")
        return {**dict.fromkeys(keys, nan), "n": 0, "n_clusters": 0}
    d = x - y
    diff = float(d.mean())
    sums, sizes = _cluster_sums(d, labels)
    rng = np.random.default_rng(seed)
    boot = _resampled_means(sums, sizes, n_boot, rng)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    tol = 1e-12 * max(1.0, abs(diff))  # float noise must not turn an exact tie into a miss
    p_boot = (1 + np.sum(np.abs(boot - diff) >= abs(diff) - tol)) / (1 + n_boot)
    null = _sign_flip_means(sums, float(len(d)), n_boot, rng)
    p_perm = (1 + np.sum(np.abs(null) >= abs(diff) - tol)) / (1 + n_boot)
    return {
        "diff": diff,
        "lo": float(lo),
        "hi": float(hi),
        "p_bootstrap": float(p_boot),
        "p_permutation": float(p_perm),
        "se": cluster_se(d, labels),
        "mdd": min_detectable_difference(d, labels, alpha=alpha),
        "n": len(d),
        "n_clusters": n_clusters,
    }


def holm(pvalues: np.ndarray | Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given), controlling the family-wise error rate.

    The i-th smallest of m p-values is multiplied by (m - i + 1), made monotone and capped at 1. NaN entries
    (tests that could not run) stay NaN and do not count towards m.
    """
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * (len(ok) - np.arange(len(ok)))
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def bootstrap_ci(
    values: np.ndarray | Sequence[float], n_boot: int, seed: int, alpha: float = 0.05
) -> tuple[float, float, float]:
    """`cluster_bootstrap_ci` with every value its own cluster (independent observations, e.g. validation requests)."""
    v = _values(values)
    return cluster_bootstrap_ci(v, np.arange(len(v)), n_boot, seed, alpha)


def paired_test(
    a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float], n_boot: int, seed: int, alpha: float = 0.05
) -> dict[str, float]:
    """`paired_cluster_test` with every pair its own cluster (for callers without user labels)."""
    x = _values(a, "a")
    return paired_cluster_test(x, b, np.arange(len(x)), n_boot, seed, alpha)
