"""Bootstrap intervals, clustered paired tests, Holm and the MDD behave as statistics should (seeded)."""

from statistics import NormalDist

import numpy as np
import pytest

from mrrec_lib.eval.stats import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    cluster_se,
    holm,
    min_detectable_difference,
    paired_cluster_test,
    paired_test,
)


def test_bootstrap_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(50), rng.random(5000)
    m1, lo1, hi1 = bootstrap_ci(small, 2000, seed=1)
    m2, lo2, hi2 = bootstrap_ci(large, 2000, seed=1)
    assert lo1 < m1 < hi1 and lo2 < m2 < hi2
    assert m1 == pytest.approx(small.mean())
    assert (hi2 - lo2) < (hi1 - lo1) / 5  # width ~ 1/sqrt(n): 10x narrower expected


def test_bootstrap_ci_is_deterministic_and_covers_a_known_mean():
    v = np.random.default_rng(3).binomial(1, 0.3, size=400).astype(float)
    assert bootstrap_ci(v, 1000, seed=7) == bootstrap_ci(v, 1000, seed=7)
    _, lo, hi = bootstrap_ci(v, 1000, seed=7)
    assert lo < 0.3 < hi
    # the interval is roughly +-1.96 standard errors
    se = np.sqrt(0.3 * 0.7 / 400)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_ci_empty_is_nan_and_nan_values_are_rejected():
    assert all(np.isnan(bootstrap_ci([], 100, 0)))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, np.nan], 100, 0)


def test_paired_test_detects_a_real_shift():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    better = base + 0.05 + rng.normal(0, 0.05, 300)
    t = paired_test(better, base, 2000, seed=1)
    assert t["diff"] == pytest.approx(np.mean(better - base))
    assert t["lo"] > 0 and t["p_bootstrap"] < 0.01 and t["p_permutation"] < 0.01


def test_paired_test_does_not_detect_a_null_shift():
    rng = np.random.default_rng(1)
    base = rng.random(300)
    same = base + rng.normal(0, 0.05, 300)  # noise, no shift
    t = paired_test(same, base, 2000, seed=1)
    assert t["lo"] < 0 < t["hi"]
    assert t["p_bootstrap"] > 0.05 and t["p_permutation"] > 0.05


def test_paired_test_identical_systems():
    v = np.random.default_rng(2).random(100)
    t = paired_test(v, v, 500, seed=0)
    assert t["diff"] == 0 and t["p_bootstrap"] == 1 and t["p_permutation"] == 1


def test_paired_test_length_mismatch():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1, 2], [1], 10, 0)


def _clustered(n_users: int, per_user: int, icc_sd: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Values = a user effect (sd `icc_sd`) + request noise (sd 0.1): strong intra-user correlation when large."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    return rng.normal(0, icc_sd, n_users)[users] + rng.normal(0, 0.1, len(users)), users


def test_cluster_ci_is_wider_than_the_naive_one_when_requests_of_a_user_correlate():
    v, users = _clustered(40, 10, icc_sd=1.0, seed=0)
    _, lo_c, hi_c = cluster_bootstrap_ci(v, users, 2000, seed=1)
    _, lo_n, hi_n = bootstrap_ci(v, 2000, seed=1)
    # design effect 1 + (m - 1) * ICC ~ 10 here: the clustered interval is ~3x wider
    assert (hi_c - lo_c) > 2.5 * (hi_n - lo_n)
    # and its width matches +-1.96 clustered standard errors
    assert (hi_c - lo_c) == pytest.approx(2 * 1.96 * cluster_se(v, users), rel=0.15)
    # without a user effect, clustering changes little
    w, users = _clustered(40, 10, icc_sd=0.0, seed=0)
    _, lo_c, hi_c = cluster_bootstrap_ci(w, users, 2000, seed=1)
    _, lo_n, hi_n = bootstrap_ci(w, 2000, seed=1)
    assert (hi_c - lo_c) == pytest.approx(hi_n - lo_n, rel=0.2)


def test_cluster_ci_covers_the_true_mean_at_about_the_nominal_rate():
    hits = 0
    for seed in range(100):
        v, users = _clustered(30, 5, icc_sd=1.0, seed=seed)
        _, lo, hi = cluster_bootstrap_ci(v, users, 400, seed=seed)
        hits += lo <= 0.0 <= hi
    assert hits >= 85  # nominal 95; the naive interval covers ~60% here


def test_singleton_clusters_are_the_ordinary_bootstrap():
    v = np.random.default_rng(4).random(50)
    assert cluster_bootstrap_ci(v, np.arange(50), 500, 3) == bootstrap_ci(v, 500, 3)
    a, b = v, np.random.default_rng(5).random(50)
    assert (
        paired_cluster_test(a, b, np.arange(50), 500, 3)["p_permutation"] == paired_test(a, b, 500, 3)["p_permutation"]
    )


def test_paired_cluster_test_counts_users_and_is_less_confident_than_the_naive_test():
    base, users = _clustered(20, 10, icc_sd=0.5, seed=2)
    rng = np.random.default_rng(3)
    shifted = base + 0.1 + rng.normal(0, 0.5, 20)[users]  # a shift that varies by user
    t = paired_cluster_test(shifted, base, users, 2000, seed=1)
    naive = paired_test(shifted, base, 2000, seed=1)
    assert t["n"] == 200 and t["n_clusters"] == 20
    assert t["diff"] == pytest.approx(naive["diff"])
    assert (t["hi"] - t["lo"]) > 2 * (naive["hi"] - naive["lo"])
    assert t["p_permutation"] > naive["p_permutation"]
    same = paired_cluster_test(base, base, users, 500, seed=0)
    assert same["diff"] == 0 and same["p_bootstrap"] == 1 and same["p_permutation"] == 1


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06 (monotone), 0.5*1 = 0.5; returned in input order
    np.testing.assert_allclose(holm([0.03, 0.5, 0.01, 0.02]), [0.06, 0.5, 0.04, 0.06])
    np.testing.assert_allclose(holm([0.04, 0.5]), [0.08, 0.5])
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # capped at 1
    out = holm([0.01, np.nan, 0.04])  # NaN (a test that could not run) is not counted
    assert np.isnan(out[1]) and out[[0, 2]].tolist() == pytest.approx([0.02, 0.04])
    assert holm([]).size == 0


def test_min_detectable_difference_is_z_sum_times_the_clustered_se():
    d = np.array([0.1, 0.3, -0.2, 0.0, 0.4, 0.2])
    users = np.array([0, 0, 1, 1, 2, 3])
    # hand: mean 0.8/6; cluster sums 0.4, -0.2, 0.4, 0.2 with sizes 2, 2, 1, 1
    mean = 0.8 / 6
    resid = np.array([0.4 - 2 * mean, -0.2 - 2 * mean, 0.4 - mean, 0.2 - mean])
    se = np.sqrt(4 / 3 * np.sum(resid**2)) / 6
    assert cluster_se(d, users) == pytest.approx(se)
    z = NormalDist().inv_cdf
    assert min_detectable_difference(d, users) == pytest.approx((z(0.975) + z(0.8)) * se)
    assert (z(0.975) + z(0.8)) == pytest.approx(2.8016, abs=1e-4)
    assert paired_cluster_test(d, np.zeros(6), users, 100, 0)["mdd"] == pytest.approx(2.8016 * se, rel=1e-4)
