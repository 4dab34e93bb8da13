"""The pool-size curve on a tiny fake pool: exact nested ranks, monotone curves, exclusion, the plot."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.eval.pool_curve import (
    curve_summary,
    distractor_tiers,
    plot_pool_curve,
    pool_curve_ranks,
    pool_size_curve,
)
from mrrec_lib.retrieval.items import ItemRetriever

N_BASE, N_DX, DIM, N_Q = 40, 61, 8, 12
FRACTIONS = [0.0, 0.25, 0.5, 1.0]


class TableEncoder:
    """A deterministic encoder: each text's vector is looked up in a table (queries and items alike)."""

    name = "table"

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts, kind="query", show_progress=False):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def unit(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pool():
    """Base items then distractors, shuffled together so pool rows do not follow the source."""
    xb, q = unit(N_BASE + N_DX, 0), unit(N_Q, 1)
    source = ["multicat"] * N_BASE + ["distractor:toys"] * N_DX
    rows = np.random.default_rng(2).permutation(N_BASE + N_DX)
    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in rows],
            "text": [f"item {j}" for j in rows],
            "source": [source[j] for j in rows],
        }
    )
    emb = xb[rows]
    table = {f"item {j}": xb[j] for j in range(len(xb))} | {f"q {j}": q[j] for j in range(N_Q)}
    retriever = ItemRetriever(items, TableEncoder(table), Config(), "dense", embeddings=emb)
    per_query = pd.DataFrame(
        {
            "system": ["dense"] * N_Q,
            "qid": [f"q{j}" for j in range(N_Q)],
            "text": [f"q {j}" for j in range(N_Q)],
            "target_item_id": [f"i{j}" for j in range(N_Q)],  # i0..i11 are base items
        }
    )
    return items, emb, retriever, per_query, table


def brute_ranks(emb, q, target_rows, keep):
    """1 + items of the sub-pool `keep` (bool per pool row) scoring strictly above the target."""
    s = q @ emb.T
    t = s[np.arange(len(q)), target_rows]
    above = (s > t[:, None]) & keep[None, :]
    above[np.arange(len(q)), target_rows] = False
    return 1 + above.sum(1)


def metrics_of(ranks, system, qid):
    from mrrec_lib.eval.metrics import ndcg_at_k

    r = ranks[(ranks["system"] == system) & (ranks["qid"] == qid)]["rank"]
    return float(ndcg_at_k(r, 100).max())


def test_nested_ranks_match_full_and_base_pools(pool):
    items, emb, retriever, per_query, table = pool
    ranks = pool_curve_ranks(retriever, items, per_query, FRACTIONS, seed=3)
    assert len(ranks) == N_Q * len(FRACTIONS)
    full = ranks[ranks["fraction"] == 1.0]["rank"].to_numpy()
    np.testing.assert_array_equal(full, retriever.ranks(per_query["text"], per_query["target_item_id"]))

    base = items[items["source"] == "multicat"].reset_index(drop=True)
    base_emb = emb[items["source"].eq("multicat").to_numpy()]
    base_retriever = ItemRetriever(base, TableEncoder(table), Config(), "dense", embeddings=base_emb)
    zero = ranks[ranks["fraction"] == 0.0]["rank"].to_numpy()
    np.testing.assert_array_equal(zero, base_retriever.ranks(per_query["text"], per_query["target_item_id"]))


def test_sub_pools_are_nested_prefixes_of_one_permutation(pool):
    items, emb, retriever, per_query, table = pool
    fr, sizes, tier = distractor_tiers(retriever, items, [1.0, 0.5, 0.0, 0.25], seed=3)
    assert fr.tolist() == FRACTIONS
    assert sizes.tolist() == [N_BASE + round(f * N_DX) for f in FRACTIONS]
    assert (tier[items["source"].eq("multicat").to_numpy()] == 0).all()
    assert [int((tier <= j).sum()) for j in range(len(fr))] == sizes.tolist()
    _, _, again = distractor_tiers(retriever, items, FRACTIONS, seed=3)
    np.testing.assert_array_equal(tier, again)  # the same permutation in a second call (e.g. the BM25 systems)

    ranks = pool_curve_ranks(retriever, items, per_query, FRACTIONS, seed=3)
    q = np.stack([table[t] for t in per_query["text"]])
    target_rows = retriever.positions(per_query["target_item_id"])
    for j, f in enumerate(fr):
        got = ranks[ranks["fraction"] == f]
        np.testing.assert_array_equal(got["rank"], brute_ranks(emb, q, target_rows, tier <= j))
        assert (got["pool_size"] == sizes[j]).all()


def test_curve_is_monotone_per_text(pool):
    items, _, retriever, per_query, _ = pool
    fine = np.linspace(0, 1, 11)
    ranks = pool_curve_ranks(retriever, items, per_query, fine, seed=5)
    wide = ranks.pivot(index="qid", columns="fraction", values="rank")
    assert (np.diff(wide.to_numpy(), axis=1) >= 0).all()
    curve = pool_size_curve(retriever, items, per_query, fine, seed=5, ks=(10, 100))
    n100 = curve[curve["metric"] == "N@100"].sort_values("fraction")["mean"].to_numpy()
    assert (np.diff(n100) <= 1e-12).all()
    assert set(curve.columns) == {"system", "fraction", "pool_size", "metric", "mean", "n"}
    assert set(curve["metric"]) == {"R@10", "R@100", "N@10", "N@100"} and (curve["n"] == N_Q).all()


def test_exclusion_empty_texts_and_shared_texts(pool):
    items, emb, retriever, per_query, table = pool
    other = per_query.assign(system="copy")
    other.loc[0, "text"] = ""  # nothing retrieved: rank inf, every metric 0
    both = pd.concat([per_query, other], ignore_index=True)
    history = {"q1": ["i20", "i21", "i1", "not-in-pool"], "q2": [f"i{j}" for j in range(50, 90)]}
    ranks = pool_curve_ranks(retriever, items, both, FRACTIONS, seed=3, exclude=history)
    a = ranks[ranks["system"] == "dense"].reset_index(drop=True)
    b = ranks[ranks["system"] == "copy"].reset_index(drop=True)
    assert np.isinf(b.loc[b["qid"] == "q0", "rank"]).all()
    np.testing.assert_array_equal(a.loc[a["qid"] != "q0", "rank"], b.loc[b["qid"] != "q0", "rank"])

    _, _, tier = distractor_tiers(retriever, items, FRACTIONS, seed=3)
    q = np.stack([table[t] for t in per_query["text"]])
    target_rows = retriever.positions(per_query["target_item_id"])
    for j, f in enumerate(FRACTIONS):
        want = []
        for i, qid in enumerate(per_query["qid"]):
            keep = tier <= j
            gone = [g for g in history.get(qid, []) if g in set(items["item_id"])]
            keep[retriever.positions(gone)] = False  # the target i1 of q1 stays: never excluded from its own rank
            want.append(brute_ranks(emb, q[i : i + 1], target_rows[i : i + 1], keep)[0])
        np.testing.assert_array_equal(a.loc[a["fraction"] == f, "rank"], want)

    summary = curve_summary(ranks, ks=(100,))
    copy0 = metrics_of(ranks, "copy", "q0")
    assert copy0 == 0.0 and len(summary) == 2 * len(FRACTIONS) * 2


def test_bm25_nested_ranks_use_the_mid_tie_rule():
    texts = ["dark roast coffee", "coffee mug", "green tea", "herbal tea", "shampoo", "tea mug", "coffee beans"]
    items = pd.DataFrame(
        {
            "item_id": list("abcdefg"),
            "text": texts,
            "source": ["base"] * 3 + ["distractor:x"] * 4,
        }
    )
    r = ItemRetriever(items, None, Config(), "bm25")
    per_query = pd.DataFrame(
        {
            "system": "bm25",
            "qid": ["1", "2", "3"],
            "text": ["dark coffee", "tea", "shampoo"],
            "target_item_id": ["a", "c", "b"],
        }
    )
    ranks = pool_curve_ranks(r, items, per_query, [0.0, 0.5, 1.0], seed=0)
    full = ranks[ranks["fraction"] == 1.0]["rank"].to_numpy()
    np.testing.assert_array_equal(full, r.ranks(per_query["text"], per_query["target_item_id"]))
    _, _, tier = distractor_tiers(r, items, [0.0, 0.5, 1.0], seed=0)
    scores = list(r.index.scores(per_query["text"].tolist()))
    for j, f in enumerate([0.0, 0.5, 1.0]):
        for i, target in enumerate(r.positions(per_query["target_item_id"])):
            s, keep = scores[i], (tier <= j)
            keep[target] = False
            t = s[target]
            want = 1 + int(((s > t) & keep).sum()) + int(((s == t) & keep).sum()) // 2
            assert ranks[(ranks["fraction"] == f)]["rank"].iloc[i] == want


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_one_tier_equals_ranks_for_every_index_type(index_type):
    n = 800
    xb, q = unit(n, 7), unit(30, 8)
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n)], "text": [f"item {j}" for j in range(n)]})
    table = {f"item {j}": xb[j] for j in range(n)} | {f"q {j}": q[j] for j in range(30)}
    cfg = Config(index_type=index_type, ivf_nlist=8, ivf_nprobe=8)
    r = ItemRetriever(items, TableEncoder(table), cfg, "dense", embeddings=xb)
    texts, targets = [f"q {j}" for j in range(30)], [f"i{j * 7}" for j in range(30)]
    got = r.nested_ranks(texts, targets, np.zeros(n, dtype=int), 1)
    np.testing.assert_array_equal(got[:, 0], r.ranks(texts, targets))


def test_errors_name_the_problem(pool):
    items, _, retriever, per_query, _ = pool
    with pytest.raises(KeyError, match="target_item_id"):
        pool_curve_ranks(retriever, items, per_query.drop(columns="target_item_id"), FRACTIONS, 0)
    with pytest.raises(KeyError, match="source"):
        pool_curve_ranks(retriever, items.drop(columns="source"), per_query, FRACTIONS, 0)
    with pytest.raises(ValueError, match="within"):
        pool_curve_ranks(retriever, items, per_query, [0.5, 1.5], 0)
    with pytest.raises(ValueError, match="same pool"):
        pool_curve_ranks(retriever, items.iloc[1:], per_query, FRACTIONS, 0)
    with pytest.raises(ValueError, match="tier has"):
        retriever.nested_ranks(["q 0"], ["i0"], np.zeros(3, dtype=int), 1)


def test_plot_pool_curve_writes_a_png(pool, tmp_path):
    items, _, retriever, per_query, _ = pool
    curve = pool_size_curve(retriever, items, pd.concat([per_query, per_query.assign(system="b")]), FRACTIONS, 0)
    fig = plot_pool_curve(curve, tmp_path / "fig" / "pool_curve.png")
    assert (tmp_path / "fig" / "pool_curve.png").stat().st_size > 1000
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="R@1000"):
        plot_pool_curve(curve, tmp_path / "x.png", metric="R@1000")
