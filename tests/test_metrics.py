"""Ranking metrics on hand-computed ranks."""

import numpy as np
import pytest

from mrrec_lib.eval.metrics import metrics_from_ranks, ndcg_at_k, recall_at_k


def test_ndcg_hand_computed():
    got = ndcg_at_k([1, 3, 7, 1000, 1001, np.inf], 1000)
    want = [1.0, 0.5, 1 / 3, 1 / np.log2(1001), 0.0, 0.0]
    np.testing.assert_allclose(got, want)


def test_recall_cutoff_is_inclusive():
    np.testing.assert_array_equal(recall_at_k([1, 10, 11, np.inf], 10), [1, 1, 0, 0])


def test_metrics_from_ranks_keys_and_values():
    m = metrics_from_ranks([1, 50, 500, 5000], ks=(10, 100, 1000))
    assert list(m) == ["R@10", "R@100", "R@1000", "N@10", "N@100", "N@1000"]
    np.testing.assert_array_equal(m["R@100"], [1, 1, 0, 0])
    assert m["N@10"][1] == 0 and m["N@100"][1] == pytest.approx(1 / np.log2(51))
    assert m["N@1000"][3] == 0


@pytest.mark.parametrize("bad", [[0], [-3], [np.nan]])
def test_invalid_ranks_are_rejected(bad):
    with pytest.raises(ValueError, match="1-based"):
        ndcg_at_k(bad, 10)
