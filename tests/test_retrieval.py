"""Indexes and the item retriever on small random pools (no model needed)."""

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.retrieval.index import BM25Index, DenseIndex, make_index
from mrrec_lib.retrieval.items import ItemRetriever


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n, d, seed, centers=20):
    rng = np.random.default_rng(seed)
    c = unit_rows(centers, d, seed + 1)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class FakeEncoder:
    """Texts are looked up in a table of vectors (queries and items alike)."""

    name = "fake"

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.dim = len(next(iter(table.values())))

    def encode(self, texts, kind="query", show_progress=False):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def brute_force_ranks(xb, q, targets):
    s = q @ xb.T
    t = s[np.arange(len(q)), targets]
    return 1 + (s > t[:, None]).sum(1)  # the target never beats itself


def test_flat_search_is_exact():
    xb, q = unit_rows(3000, 16, 0), unit_rows(37, 16, 1)
    pos, scores = DenseIndex(xb).search(q, 25)
    want = np.argsort(-(q @ xb.T), axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(pos, want)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ xb.T, want, 1), rtol=1e-5, atol=1e-6)


def test_flat_keeps_the_callers_array_without_copy():
    xb = unit_rows(100, 8, 0)
    idx = DenseIndex(xb)
    assert np.shares_memory(idx._xb, xb)


def test_k_larger_than_pool_is_padded():
    xb = unit_rows(5, 8, 0)
    pos, scores = DenseIndex(xb).search(unit_rows(2, 8, 1), 8)
    assert pos.shape == (2, 8) and (pos[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert sorted(pos[0, :5]) == list(range(5))


@pytest.mark.parametrize("kind,kw", [("ivf", {"nlist": 16, "nprobe": 16}), ("hnsw", {"hnsw_m": 16, "ef_search": 200})])
def test_approximate_indexes_find_most_neighbours(kind, kw):
    xb, q = clustered(4000, 32, 0), clustered(50, 32, 7)
    exact, _ = DenseIndex(xb).search(q, 20)
    approx, _ = DenseIndex(xb, kind, **kw).search(q, 20)
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9  # nprobe = nlist makes IVF exhaustive; HNSW at ef 200 on 4k points is near-exact


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_exact_counts_and_vectors_for_every_index_type(kind):
    xb, q = clustered(2000, 16, 3), clustered(30, 16, 4)
    idx = DenseIndex(xb, kind, nlist=8)
    targets = np.random.default_rng(0).integers(0, len(xb), len(q))
    np.testing.assert_array_equal(idx.vectors(targets), xb[targets])
    t = np.einsum("ij,ij->i", q, xb[targets])
    got = 1 + idx.exact_counts(q, t, exclude=targets)
    np.testing.assert_array_equal(got, brute_force_ranks(xb, q, targets))
    # below the target's own score the target would count itself: `exclude` must remove exactly it
    lower = t - 0.05
    above = (q @ xb.T > lower[:, None]).sum(1)
    np.testing.assert_array_equal(idx.exact_counts(q, lower), above)
    np.testing.assert_array_equal(idx.exact_counts(q, lower, exclude=targets), above - 1)


def test_bm25_ranks_the_obvious_doc_first():
    docs = ["dark roast coffee beans", "green tea leaves", "the red apple juice", "shampoo for curly hair"]
    idx = BM25Index(docs)
    pos, scores = idx.search(["strong coffee", "curly hair shampoo", "the of and"], 3)
    assert pos[0, 0] == 0 and pos[1, 0] == 3
    assert (pos[0, 1:] == -1).all()  # no other doc shares a term
    assert (pos[2] == -1).all() and np.isneginf(scores[2]).all()  # stop words only


def test_make_index_needs_one_source():
    cfg = Config()
    assert isinstance(make_index(cfg, texts=["a b", "c d"]), BM25Index)
    assert isinstance(make_index(cfg, embeddings=unit_rows(10, 4, 0)), DenseIndex)
    with pytest.raises(ValueError, match="exactly one"):
        make_index(cfg)


def random_retriever(n=1500, d=24, nq=40, seed=0, index_type="flat"):
    xb, q = clustered(n, d, seed), clustered(nq, d, seed + 10)
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n)], "text": [f"item {j}" for j in range(n)]})
    table = {f"item {j}": xb[j] for j in range(n)} | {f"q {j}": q[j] for j in range(nq)}
    cfg = Config(index_type=index_type, ivf_nlist=8, ivf_nprobe=8)
    return ItemRetriever(items, FakeEncoder(table), cfg, "dense", embeddings=xb), xb, q


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_item_ranks_agree_with_brute_force(index_type):
    r, xb, q = random_retriever(index_type=index_type)
    targets = np.random.default_rng(1).integers(0, len(xb), len(q))
    got = r.ranks([f"q {j}" for j in range(len(q))], [f"i{t}" for t in targets])
    np.testing.assert_array_equal(got, brute_force_ranks(xb, q, targets))


def test_item_ranks_agree_with_search():
    r, xb, q = random_retriever()
    texts = [f"q {j}" for j in range(len(q))]
    ids, scores = r.search(texts, 50)
    assert all(len(x) == 50 for x in ids) and np.all(np.diff(scores, axis=1) <= 1e-6)
    for text, found in zip(texts, ids, strict=True):
        np.testing.assert_array_equal(r.ranks([text] * 50, found), np.arange(1, 51))


def test_item_ranks_errors_and_empty_text():
    r, xb, q = random_retriever()
    with pytest.raises(KeyError, match="nope"):
        r.ranks(["q 0"], ["nope"])
    with pytest.raises(ValueError, match="2 texts but 1"):
        r.ranks(["q 0", "q 1"], ["i1"])
    got = r.ranks(["", "   ", "q 0"], ["i0", "i1", "i2"])
    assert got[0] == got[1] == len(xb) and got[2] < len(xb) + 1
    ids, scores = r.search(["", "q 1"], 5)
    assert ids[0] == [] and np.isneginf(scores[0]).all() and len(ids[1]) == 5


def test_bm25_item_retriever_ranks_and_ties():
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e"],
            "text": ["dark roast coffee", "coffee mug", "green tea", "herbal tea", "shampoo"],
        }
    )
    r = ItemRetriever(items, None, Config(), "bm25")
    ids, _ = r.search(["dark coffee"], 3)
    assert ids[0] == ["a", "b"]
    ranks = r.ranks(["dark coffee", "dark coffee", "dark coffee", ""], ["a", "b", "e", "a"])
    # e shares no term: tied at 0 with c, d -> 1 + 2 higher + 2 others tied // 2
    np.testing.assert_array_equal(ranks, [1, 2, 4, 5])


def test_item_table_validation():
    with pytest.raises(KeyError, match="text"):
        ItemRetriever(pd.DataFrame({"item_id": ["a"]}), None, Config(), "bm25")
    with pytest.raises(ValueError, match="duplicate"):
        ItemRetriever(pd.DataFrame({"item_id": ["a", "a"], "text": ["x", "y"]}), None, Config(), "bm25")
