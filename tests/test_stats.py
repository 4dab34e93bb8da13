"""Bootstrap intervals and paired tests behave as statistics should (seeded)."""

import numpy as np
import pytest

from mrrec_lib.eval.stats import bootstrap_ci, paired_test, summarise


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


def test_summarise_rows():
    df = summarise({"R@10": np.array([1.0, 0.0, 1.0, 1.0]), "N@10": np.array([0.5, 0.0, 1.0, 0.2])}, 200, 0)
    assert list(df.columns) == ["metric", "mean", "lo", "hi", "n"]
    assert df["metric"].tolist() == ["R@10", "N@10"]
    assert df.loc[0, "mean"] == pytest.approx(0.75) and df.loc[0, "n"] == 4
    assert (df["lo"] <= df["mean"]).all() and (df["mean"] <= df["hi"]).all()
