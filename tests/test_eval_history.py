"""History exclusion on real item retrievers: rank_excl equals the rank in a pool rebuilt without those items."""

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.eval.history import excluded_ranks, history_items, item_scores
from mrrec_lib.retrieval.items import ItemRetriever

WORDS = ["tea", "green", "black", "mug", "cup", "honey", "lemon", "ginger", "oat", "milk", "jar", "spoon"]


class HashEncoder:
    """Bag of words over WORDS, L2-normalised (deterministic, no model)."""

    name = "hash"

    def encode(self, texts, kind="query", show_progress=False):
        x = np.array(
            [[t.split().count(w) + 0.01 * (i + 1) for i, w in enumerate(WORDS)] for t in texts], dtype=np.float32
        )
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]
    return pd.DataFrame({"item_id": [f"i{j}" for j in range(n)], "text": texts})


def _retriever(items: pd.DataFrame, kind: str) -> ItemRetriever:
    if kind == "bm25":
        return ItemRetriever(items, None, Config(), "bm25")
    enc = HashEncoder()
    return ItemRetriever(items, enc, Config(), "dense", embeddings=enc.encode(items["text"].tolist()))


@pytest.mark.parametrize("kind", ["dense", "bm25"])
def test_excluded_rank_equals_rank_in_the_pool_without_history(kind):
    items = _items()
    full = _retriever(items, kind)
    rng = np.random.default_rng(1)
    texts = ["green tea honey", "black tea lemon", "mug cup", "oat milk", "ginger tea", "spoon jar honey"]
    targets = [f"i{j}" for j in rng.choice(60, size=len(texts), replace=False)]
    history = [[f"i{j}" for j in rng.choice(60, size=8, replace=False) if f"i{j}" != t] for t in targets]
    history[2] = []  # a user without earlier items
    history[3] += ["not-in-pool"]  # an earlier item the pool does not hold (no text) is ignored
    keep = full.ranks(texts, targets)
    got = excluded_ranks(full, texts, targets, keep, history)
    for i, (text, target) in enumerate(zip(texts, targets, strict=True)):
        if kind == "dense":
            smaller = _retriever(items[~items["item_id"].isin(history[i])].reset_index(drop=True), kind)
            assert got[i] == smaller.ranks([text], [target])[0]
        else:
            # BM25 statistics (IDF) depend on the pool, so compare with a recount over the full pool's scores
            scores = next(full.index.scores([text]))
            pos = full.positions([target])[0]
            gone = np.isin(full.item_ids, history[i])
            t = scores[pos]
            higher = int(((scores > t) & ~gone).sum())
            tied = int(((scores == t) & ~gone).sum()) - 1
            assert abs(got[i] - (1 + higher + tied // 2)) <= 1
    assert got[2] == keep[2]
    assert (got <= keep).all()


def test_item_scores_match_what_the_rank_counts():
    items = _items()
    dense = _retriever(items, "dense")
    s = item_scores(dense, ["green tea"], [["i0", "i1", "nope"]])[0]
    q = HashEncoder().encode(["green tea"])[0]
    emb = HashEncoder().encode(items["text"].tolist())
    np.testing.assert_allclose(s[:2], emb[:2] @ q, rtol=1e-5)
    assert np.isnan(s[2])


def test_history_items_are_strictly_earlier_distinct_and_never_the_target():
    inter = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "u", "v"],
            "item_id": ["a", "b", "a", "t", "c"],
            "timestamp": [1, 2, 3, 5, 1],
        }
    )
    queries = pd.DataFrame(
        {"user_id": ["u", "u", "v", "w"], "target_timestamp": [5, 2, 9, 9], "target_item_id": ["x", "y", "c", "z"]}
    )
    assert history_items(inter, queries) == [["a", "b"], ["a"], [], []]
