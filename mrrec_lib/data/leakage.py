"""The leakage check: a query's own target review must be invisible to everything its policy sees.

Runs on the final tables every time stage 01 writes them (and again in later
stages, e.g. on the memory entries) and must report 0. A target review *leaks*
into a text when the text equals it, or, for a review of at least
`min_words` words, when the review's first `min_words` words appear in the text
(items keep trimmed review snippets, so the check uses the opening words).
Checked per query:
- history: the user's interactions strictly before the target;
- the target item itself in that history (a repurchase: the request would be
  answered by the user's own record, not by understanding the request; stage 01
  drops such targets, so this item-level check must be 0 as well);
- item texts of the whole pool (they are what retrieval matches against);
- memory entries visible to the query, when given;
- users shared between splits, and targets whose review cannot be found
  (unverifiable counts as a violation).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.data.text import leak_key, normalise, review_snippets

_EXAMPLES = 5


def _windows(words: list[str], k: int) -> set[str]:
    return {" ".join(words[i : i + k]) for i in range(max(0, len(words) - k + 1))}


def _leaks(target_norm: str, target_key: str, long: bool, text_norm: str) -> bool:
    if not target_norm:
        return False
    return target_norm == text_norm or (long and f" {target_key} " in f" {text_norm} ")


def target_key(review: str, min_words: int) -> tuple[str, str, bool]:
    """(normalised review, its leak key, whether it is long enough to be matched by its opening words)."""
    norm = normalise(review)
    return norm, leak_key(norm, min_words), len(norm.split()) >= min_words


def item_text_hits(items: pd.DataFrame, targets: dict[str, tuple[str, str, bool]], min_words: int) -> dict[str, str]:
    """qid -> the first item whose text holds that target review (`targets`: qid -> `target_key(...)`)."""
    long_keys: dict[str, list[str]] = defaultdict(list)
    short_texts: dict[str, list[str]] = defaultdict(list)
    for qid, (norm, key, long) in targets.items():
        if long:
            long_keys[key].append(qid)
        elif norm:
            short_texts[norm].append(qid)
    hits: dict[str, str] = {}
    for item_id, text in tqdm(
        zip(items["item_id"], items["text"], strict=True),
        total=len(items),
        desc="leakage check",
        mininterval=5,
        disable=len(items) < 50_000,
    ):
        norm = normalise(text)
        for key in _windows(norm.split(), min_words) & long_keys.keys():
            for qid in long_keys[key]:
                hits.setdefault(qid, item_id)
        for part in [norm, *(normalise(s) for s in review_snippets(text))]:
            for qid in short_texts.get(part, ()):
                hits.setdefault(qid, item_id)
    return hits


def leakage_report(
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    queries: pd.DataFrame,
    min_words: int = 8,
    memory: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Count leaks of each query's target review; `leakage_violations` must be 0.

    `memory`, if given, has columns user_id, target_timestamp, text: the entries
    the query (user_id, target_timestamp) can retrieve.
    """
    by_user = {u: g for u, g in interactions.groupby("user_id", sort=False)}
    empty = interactions.iloc[0:0]
    targets: dict[str, tuple[str, str, bool]] = {}  # qid -> (normalised review, key, long)
    missing, history_hits, item_hits_history = [], [], []
    for q in queries.itertuples(index=False):
        rows = by_user.get(q.user_id, empty)
        hit = rows[(rows["item_id"] == q.target_item_id) & (rows["timestamp"] == q.target_timestamp)]
        if hit.empty:
            missing.append(q.qid)
            continue
        targets[q.qid] = target_key(hit["review_text"].iloc[0], min_words)
        norm, key, long = targets[q.qid]
        before = rows[rows["timestamp"] < q.target_timestamp]
        if (before["item_id"] == q.target_item_id).any():
            item_hits_history.append(q.qid)
        if any(_leaks(norm, key, long, normalise(t)) for t in before["review_text"]):
            history_hits.append(q.qid)

    item_hits = item_text_hits(items, targets, min_words)

    memory_hits: list[str] = []
    if memory is not None and len(memory):
        visible = {k: g["text"].tolist() for k, g in memory.groupby(["user_id", "target_timestamp"], sort=False)}
        for q in queries.itertuples(index=False):
            if q.qid not in targets:
                continue
            norm, key, long = targets[q.qid]
            if any(_leaks(norm, key, long, normalise(t)) for t in visible.get((q.user_id, q.target_timestamp), [])):
                memory_hits.append(q.qid)

    splits_per_user = queries.groupby("user_id")["split"].nunique() if "split" in queries else pd.Series(dtype=int)
    shared_users = sorted(splits_per_user[splits_per_user > 1].index)
    report = {
        "queries_checked": int(len(queries)),
        "target_review_missing": len(missing),
        "target_in_history": len(history_hits),
        "target_item_in_history": len(item_hits_history),
        "target_in_item_text": len(item_hits),
        "target_in_memory": len(memory_hits),
        "users_in_several_splits": len(shared_users),
    }
    report["leakage_violations"] = sum(report[k] for k in report if k != "queries_checked")
    report["examples"] = {
        "target_review_missing": missing[:_EXAMPLES],
        "target_in_history": history_hits[:_EXAMPLES],
        "target_item_in_history": item_hits_history[:_EXAMPLES],
        "target_in_item_text": [f"{q} -> {i}" for q, i in list(item_hits.items())[:_EXAMPLES]],
        "target_in_memory": memory_hits[:_EXAMPLES],
        "users_in_several_splits": shared_users[:_EXAMPLES],
    }
    return report
