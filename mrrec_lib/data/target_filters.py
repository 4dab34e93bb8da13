"""Stage 01's target and pool filters: every rule that removes a target, a user's rows or an item snippet.

Each is counted in the `SkipLog` under `<source or table>/<reason>` with
examples, so the stage's `dropped` metrics say what every rule cost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.leakage import item_text_hits, target_key
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.sources.base import SourceData
from mrrec_lib.data.text import REVIEW_PREFIX, leak_key, normalise, review_snippets


def one_source_per_user(parts: dict[str, SourceData], targets: pd.DataFrame, skips: SkipLog) -> dict[str, SourceData]:
    """Every user id in exactly one source: the one holding most of its `targets` (ties: config order).

    Amazon user ids are global, so a user id found in several sources is one
    person: two sources' histories run on different clocks (agenticshop's are
    list positions) and cannot be merged into one timeline, and keeping both
    copies would put one person's memory in two splits. `targets` are the
    candidate targets of every source (after the shared-request join, so a user
    stays where their requests are); each part's targets are replaced by its
    share of them. The other sources drop the user's rows
    (`<source>/user_in_other_source`); the user's items stay in the pool.
    """
    n_targets = targets.groupby(["user_id", "source"]).size().to_dict()
    best: dict[str, tuple[int, int, str]] = {}
    for rank, (name, part) in enumerate(parts.items()):
        for user in set(part.interactions["user_id"]) | set(part.targets["user_id"]):
            score = (n_targets.get((user, name), 0), -rank, name)
            best[user] = max(best.get(user, score), score)
    out: dict[str, SourceData] = {}
    for name, part in parts.items():
        users = set(part.interactions["user_id"]) | set(part.targets["user_id"])
        moved = sorted(u for u in users if best[u][2] != name)
        for user in moved:
            skips.add(name, "user_in_other_source", f"{user} (kept in {best[user][2]})")
        own = targets[(targets["source"] == name) & ~targets["user_id"].isin(moved)]
        out[name] = SourceData(
            part.items,
            part.interactions[~part.interactions["user_id"].isin(moved)].reset_index(drop=True),
            own.reset_index(drop=True),
            part.notes,
        )
    return out


def drop_repurchases(targets: pd.DataFrame, interactions: pd.DataFrame, skips: SkipLog) -> pd.DataFrame:
    """Targets whose item is already in the user's earlier history leave (`queries/target_is_repurchase`).

    A repurchase is answered by the user's own record, not by understanding the
    request, and the exclude-history evaluation could never rank it.
    """
    earlier = targets[["qid", "user_id", "item_id", "timestamp"]].merge(
        interactions[["user_id", "item_id", "timestamp"]], on=["user_id", "item_id"], suffixes=("", "_seen")
    )
    repeat = set(earlier.loc[earlier["timestamp_seen"] < earlier["timestamp"], "qid"])
    mask = targets["qid"].isin(repeat)
    for qid in targets.loc[mask, "qid"]:
        skips.add("queries", "target_is_repurchase", qid)
    return targets[~mask].reset_index(drop=True)


def scrub_item_reviews(items: pd.DataFrame, targets: pd.DataFrame, min_words: int, skips: SkipLog) -> pd.DataFrame:
    """Remove review snippets that repeat any source's target review from item texts.

    Each source already keeps its own targets out of its item texts; this pass
    covers the other sources' targets too (e.g. a Grocery target "great
    product" that a Beauty reviewer also wrote).
    """
    norms = {normalise(t) for t in targets["review_text"]} - {""}
    keys = {leak_key(t, min_words) for t in norms if len(t.split()) >= min_words}

    def leaks(snippet: str) -> bool:
        words = normalise(snippet).split()
        windows = {" ".join(words[i : i + min_words]) for i in range(max(0, len(words) - min_words + 1))}
        return " ".join(words) in norms or bool(windows & keys)

    texts = []
    for text in items["text"]:
        snippets = review_snippets(text)
        bad = [s for s in snippets if leaks(s)]
        if bad:
            skips.add("pool", "review_snippet_repeats_a_target", n=len(bad))
            lines = [
                ln for ln in text.split("\n") if not (ln.startswith(REVIEW_PREFIX) and ln[len(REVIEW_PREFIX) :] in bad)
            ]
            text = "\n".join(lines)
        texts.append(text)
    out = items.assign(text=texts)
    empty = out["text"].str.strip().eq("")
    skips.add("pool", "item_without_text_after_scrub", n=int(empty.sum()))
    return out[~empty].reset_index(drop=True)


def drop_reviews_in_item_text(
    targets: pd.DataFrame, items: pd.DataFrame, min_words: int, skips: SkipLog
) -> pd.DataFrame:
    """Targets whose review is still in an item text after the scrub leave (`queries/target_review_in_item_text`).

    What is left to find is a title or description the review quotes (some
    reviewers paste the product title as their opening words); it cannot be cut
    out of the item, and the leakage check would otherwise stop the stage.
    """
    keys = {qid: target_key(text, min_words) for qid, text in zip(targets["qid"], targets["review_text"], strict=True)}
    hits = item_text_hits(items, keys, min_words)
    for qid, item_id in hits.items():
        skips.add("queries", "target_review_in_item_text", f"{qid} -> {item_id}")
    return targets[~targets["qid"].isin(hits)].reset_index(drop=True)


def cap_queries(targets: pd.DataFrame, cfg: Config, skips: SkipLog) -> pd.DataFrame:
    """`cfg.max_queries` queries, seeded, drawn before any LLM call so small runs stay cheap."""
    if cfg.max_queries <= 0 or len(targets) <= cfg.max_queries:
        return targets
    keep = np.random.default_rng(cfg.seed).choice(len(targets), size=cfg.max_queries, replace=False)
    skips.add("queries", "over_max_queries", n=len(targets) - cfg.max_queries)
    return targets.iloc[np.sort(keep)].reset_index(drop=True)
