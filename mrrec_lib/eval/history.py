"""Ranking with the user's earlier items removed, as sequential recommendation evaluates.

Items a user already bought before the request are in the pool, and a profile
written from that user's memory naturally resembles them: they can outrank the
target for a reason no shop would act on (it would not recommend what was just
bought). `eval_exclude_history` removes them from the ranking. Indexes are not
rebuilt: the target's rank over the whole pool is already exact, so the rank
without history is that rank minus the history items that score above the
target, which needs only the scores of the few history items.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def history_items(interactions: pd.DataFrame, queries: pd.DataFrame) -> list[list[str]]:
    """Per query, the distinct items its user interacted with strictly before `target_timestamp`, oldest first.

    The target itself is dropped if it appears (stage 01 removes repurchases, so it should not): excluding it
    would remove the very item being ranked.
    """
    by_user = {
        u: g.sort_values(["timestamp", "item_id"], kind="stable")
        for u, g in interactions[["user_id", "item_id", "timestamp"]].groupby("user_id", sort=False)
    }
    out, repeats = [], 0
    for user, ts, target in zip(
        queries["user_id"], queries["target_timestamp"], queries["target_item_id"], strict=True
    ):
        g = by_user.get(user)
        items = [] if g is None else list(dict.fromkeys(g.loc[g["timestamp"] < int(ts), "item_id"].astype(str)))
        if str(target) in items:
            repeats += 1
            items.remove(str(target))
        out.append(items)
    if repeats:
        log.warning("%d queries had their target among the user's earlier items; it stays ranked", repeats)
    return out


_POOL_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pool_index(retriever: Any) -> pd.Index:
    """Pool item id -> row, built once per retriever and dropped with it (no copy of the id strings)."""
    if retriever not in _POOL_INDEX:
        _POOL_INDEX[retriever] = pd.Index(retriever.item_ids)
    return _POOL_INDEX[retriever]


def item_scores(retriever: Any, texts: Sequence[str], item_ids: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Per text, the retrieval score of each of its items, as `ItemRetriever.ranks` scores them; NaN if not in the pool.

    A retriever may provide its own `item_scores(texts, item_ids)` (test fakes do); an `ItemRetriever` is scored
    through its index: dense = query embedding x stored item vectors, BM25 = the text's score vector.
    """
    own = getattr(retriever, "item_scores", None)
    if own is not None:
        return [np.asarray(s, dtype=float) for s in own(list(texts), [list(x) for x in item_ids])]
    from mrrec_lib.retrieval.index import BM25Index

    pool = _pool_index(retriever)
    pos = [pool.get_indexer(list(x)) for x in item_ids]
    out = [np.full(len(p), np.nan) for p in pos]
    if isinstance(retriever.index, BM25Index):
        for row, p, scores in zip(out, pos, retriever.index.scores(list(texts)), strict=True):
            row[p >= 0] = scores[p[p >= 0]]
        return out
    q = retriever.encoder.encode(list(texts), kind="query")
    for i, p in enumerate(pos):
        if (p >= 0).any():
            out[i][p >= 0] = retriever.index.vectors(p[p >= 0]) @ q[i]
    return out


def excluded_ranks(
    retriever: Any,
    texts: Sequence[str],
    targets: Sequence[str],
    ranks_keep: Sequence[int],
    history: Sequence[Sequence[str]],
) -> np.ndarray:
    """The target's rank among the pool minus the user's earlier items, from its rank over the whole pool.

    rank_excl = rank_keep - #(history items scoring strictly higher than the target). BM25 ranks also count half
    the items tied with the target (`ItemRetriever.ranks`), so there half the tied history items are removed too
    (rounded down: within one rank of recounting the ties, which are mostly items sharing no word with the text).
    """
    keep = np.asarray(ranks_keep, dtype=np.int64)
    todo = [i for i, h in enumerate(history) if h]
    if not todo:
        return keep.copy()
    scores = item_scores(retriever, [texts[i] for i in todo], [[targets[i], *history[i]] for i in todo])
    mid_tie = getattr(retriever, "kind", "dense") == "bm25"
    out = keep.copy()
    for i, s in zip(todo, scores, strict=True):
        target, hist = s[0], s[1:]
        removed = int(np.sum(hist > target)) + (int(np.sum(hist == target)) // 2 if mid_tie else 0)
        out[i] = max(1, keep[i] - removed)
    return out
