"""Stage 01: load the configured sources, write requests, split by user, check leakage, write the tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.leakage import leakage_report
from mrrec_lib.data.queries import build_queries
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.schema import QUERY_COLUMNS, read_table, validate
from mrrec_lib.data.sources.agenticshop import load_agenticshop
from mrrec_lib.data.sources.amazon2023 import load_amazon2023
from mrrec_lib.data.sources.amazon_c4 import load_amazon_c4
from mrrec_lib.data.sources.base import RULES, SourceData
from mrrec_lib.data.splits import SPLITS, assign_splits, history_lengths
from mrrec_lib.data.stats import length_summary, table5
from mrrec_lib.data.text import REVIEW_PREFIX, leak_key, normalise, review_snippets
from mrrec_lib.runs import RunPaths, write_parquet

LOADERS: dict[str, Callable[[Config, SkipLog], SourceData]] = {
    "agenticshop": load_agenticshop,
    "amazon2023_reviews": load_amazon2023,
    "amazon_c4": load_amazon_c4,
}


def load_sources(cfg: Config, skips: SkipLog) -> dict[str, SourceData]:
    unknown = [s for s in cfg.sources if s not in LOADERS]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown} in config key `sources`; known: {sorted(LOADERS)}")
    if not cfg.sources:
        raise ValueError("config key `sources` is empty: nothing to prepare")
    return {name: LOADERS[name](cfg, skips) for name in cfg.sources}


def _combine(parts: dict[str, SourceData], skips: SkipLog) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    items = pd.concat([p.items for p in parts.values()], ignore_index=True)
    items = items.assign(_empty=items["text"].eq("")).sort_values("_empty", kind="stable")
    dup = items["item_id"].duplicated()
    skips.add("pool", "duplicate_item_id", n=int(dup.sum()))
    items = items[~dup & ~items["_empty"]].drop(columns="_empty").reset_index(drop=True)
    inter = pd.concat([p.interactions for p in parts.values()], ignore_index=True)
    dup = inter.duplicated(["user_id", "item_id", "timestamp"])
    skips.add("interactions", "duplicate_interaction", n=int(dup.sum()))
    inter = inter[~dup].reset_index(drop=True)
    targets = pd.concat([p.targets for p in parts.values()], ignore_index=True)
    dup = targets["qid"].duplicated()
    skips.add("queries", "duplicate_qid", n=int(dup.sum()))
    return items, inter, targets[~dup].reset_index(drop=True)


def _scrub_item_reviews(items: pd.DataFrame, targets: pd.DataFrame, min_words: int, skips: SkipLog) -> pd.DataFrame:
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


def _cap_queries(targets: pd.DataFrame, cfg: Config, skips: SkipLog) -> pd.DataFrame:
    """`cfg.max_queries` queries, seeded, drawn before any LLM call so small runs stay cheap."""
    if cfg.max_queries <= 0 or len(targets) <= cfg.max_queries:
        return targets
    keep = np.random.default_rng(cfg.seed).choice(len(targets), size=cfg.max_queries, replace=False)
    skips.add("queries", "over_max_queries", n=len(targets) - cfg.max_queries)
    return targets.iloc[np.sort(keep)].reset_index(drop=True)


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def prepare_data(cfg: Config, paths: RunPaths, llm_factory: Callable[[Config], Any] | None = None) -> dict[str, Any]:
    """Build items / interactions / queries into `paths.data` and return the stage's metrics."""
    skips = SkipLog()
    parts = load_sources(cfg, skips)
    items, interactions, targets = _combine(parts, skips)
    items = _scrub_item_reviews(items, targets, cfg.leakage_min_words, skips)
    missing_items = ~targets["item_id"].isin(items["item_id"])
    skips.add("queries", "target_not_in_pool", n=int(missing_items.sum()))
    targets = _cap_queries(targets[~missing_items].reset_index(drop=True), cfg, skips)

    built, llm_counts = build_queries(targets, cfg, llm_factory)
    built["split"] = assign_splits(built, cfg.split_ratios, cfg.seed)
    queries = validate(
        built.rename(columns={"item_id": "target_item_id", "timestamp": "target_timestamp"})[list(QUERY_COLUMNS)],
        "queries",
    )
    users = set(queries["user_id"])
    n_before = len(interactions)
    interactions = validate(interactions[interactions["user_id"].isin(users)].reset_index(drop=True), "interactions")
    items = validate(items, "items")

    leakage = leakage_report(items, interactions, queries, cfg.leakage_min_words)
    if leakage["leakage_violations"]:
        raise RuntimeError(f"leakage check failed, tables not written: {leakage}")
    for name, df in (("items", items), ("interactions", interactions), ("queries", queries)):
        write_parquet(df, paths.data / f"{name}.parquet")

    hist = history_lengths(interactions, queries)
    rules = built["rule"].reindex(queries.index)
    stats = table5(items, interactions, queries)
    return {
        "counts": {k: int(v) for k, v in stats.loc["all"].items()},
        "per_source": {src: {k: int(v) for k, v in row.items()} for src, row in stats.drop(index="all").iterrows()},
        "queries_per_rule": {r: int((rules == r).sum()) for r in RULES if (rules == r).any()},
        "queries_per_split": {s: int((queries["split"] == s).sum()) for s in SPLITS},
        "users_per_split": {s: int(queries.loc[queries["split"] == s, "user_id"].nunique()) for s in SPLITS},
        "queries_per_rule_and_split": {
            f"{r}/{s}": int(n) for (r, s), n in pd.crosstab(rules, queries["split"]).stack().items() if n
        },
        "queries_per_builder": _counts(queries["query_builder"]),
        "llm_fallbacks": dict(llm_counts),
        "pool_size": int(len(items)),
        "pool_per_category": _counts(items["category"]),
        "queries_per_category": _counts(queries["category"]),
        "interactions_total_loaded": int(n_before),
        "interactions_of_users_without_query": int(n_before - len(interactions)),
        "history_length": {
            "mean": round(float(hist.mean()), 2) if len(hist) else 0.0,
            "median": float(hist.median()) if len(hist) else 0.0,
            "min": int(hist.min()) if len(hist) else 0,
            "max": int(hist.max()) if len(hist) else 0,
        },
        "raw_query_length": length_summary(queries["raw_query"]),
        "query_length": length_summary(queries["query"]),
        "dropped": skips.as_dict(),
        "dropped_total": skips.total(),
        "dropped_examples": skips.examples,
        "source_notes": {name: p.notes for name, p in parts.items() if p.notes},
        "leakage": leakage,
        "leakage_violations": int(leakage["leakage_violations"]),
    }


def load_data(paths: RunPaths) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three validated tables of a run (MissingStageError if stage 01 has not run)."""
    return read_table(paths.data, "items"), read_table(paths.data, "interactions"), read_table(paths.data, "queries")
