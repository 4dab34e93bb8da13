"""Stage 01: load the configured sources, attach or write requests, split by user, check leakage, write the tables.

Order matters (the filters are in `data/target_filters.py`): targets without a
shared request leave first, so that a user found in several sources keeps the
one holding their requests; repurchases leave before item texts are scrubbed of
target reviews (fewer targets, fewer snippets lost); distractors join the pool
before the review-in-item-text and target-in-pool checks; requests are written
only for the targets that stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.leakage import leakage_report
from mrrec_lib.data.overlap import overlap_column, title_overlap_report
from mrrec_lib.data.queries import build_queries
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.schema import QUERY_COLUMNS, read_table, validate
from mrrec_lib.data.shared_requests import join_shared_requests
from mrrec_lib.data.sources.agenticshop import load_agenticshop
from mrrec_lib.data.sources.amazon2023 import load_amazon2023
from mrrec_lib.data.sources.amazon2023_multicat import load_amazon2023_multicat
from mrrec_lib.data.sources.amazon_c4 import load_amazon_c4
from mrrec_lib.data.sources.base import RULES, SourceData
from mrrec_lib.data.splits import SPLITS, assign_sized_splits, assign_splits, history_lengths
from mrrec_lib.data.stats import length_summary, table5
from mrrec_lib.data.target_filters import (
    cap_queries,
    drop_repurchases,
    drop_reviews_in_item_text,
    one_source_per_user,
    scrub_item_reviews,
)
from mrrec_lib.runs import RunPaths, write_parquet

LOADERS: dict[str, Callable[[Config, SkipLog], SourceData]] = {
    "amazon2023_multicat": load_amazon2023_multicat,
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


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def split_queries(queries: pd.DataFrame, cfg: Config) -> pd.Series:
    """Sized splits when `cfg.split_test_queries` > 0, else `cfg.split_ratios` (see data/splits.py)."""
    if cfg.split_test_queries > 0:
        return assign_sized_splits(queries, cfg.split_test_queries, cfg.split_val_queries, cfg.seed)
    return assign_splits(queries, cfg.split_ratios, cfg.seed)


def prepare_data(cfg: Config, paths: RunPaths, llm_factory: Callable[[Config], Any] | None = None) -> dict[str, Any]:
    """Build items / interactions / queries into `paths.data` and return the stage's metrics."""
    skips = SkipLog()
    parts = load_sources(cfg, skips)
    targets = pd.concat([p.targets for p in parts.values()], ignore_index=True)
    shared_report: dict[str, Any] = {}
    if cfg.query_builder == "shared":
        loaded = {name: set(p.interactions["user_id"]) | set(p.targets["user_id"]) for name, p in parts.items()}
        targets, shared_report = join_shared_requests(targets, cfg, skips, loaded)
    parts = one_source_per_user(parts, targets, skips)
    items, interactions, targets = _combine(parts, skips)
    kept = drop_repurchases(targets, interactions, skips)
    repurchases = _counts(targets.loc[~targets["qid"].isin(kept["qid"]), "source"])
    targets = kept
    items = scrub_item_reviews(items, targets, cfg.leakage_min_words, skips)
    pool_report: dict[str, Any] = {"enabled": False}
    if cfg.pool_distractors:
        from mrrec_lib.data.distractors import add_distractors

        items, pool_report = add_distractors(items, cfg, skips)
    targets = drop_reviews_in_item_text(targets, items, cfg.leakage_min_words, skips)
    missing_items = ~targets["item_id"].isin(items["item_id"])
    skips.add("queries", "target_not_in_pool", n=int(missing_items.sum()))
    targets = cap_queries(targets[~missing_items].reset_index(drop=True), cfg, skips)

    built, llm_counts = build_queries(targets, cfg, llm_factory)
    titles = built["item_id"].map(items.drop_duplicates("item_id").set_index("item_id")["title"]).fillna("")
    built["title_overlap"] = overlap_column(built["query"], titles)
    built["title_overlap_raw"] = overlap_column(built["raw_query"], titles)
    built["split"] = split_queries(built, cfg)
    overlap = title_overlap_report(built, titles)
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
        "query_builder": cfg.query_builder,
        "queries_per_rule": {r: int((rules == r).sum()) for r in RULES if (rules == r).any()},
        "split_mode": "sized" if cfg.split_test_queries > 0 else "ratios",
        "queries_per_split": {s: int((queries["split"] == s).sum()) for s in SPLITS},
        "users_per_split": {s: int(queries.loc[queries["split"] == s, "user_id"].nunique()) for s in SPLITS},
        "queries_per_rule_and_split": {
            f"{r}/{s}": int(n) for (r, s), n in pd.crosstab(rules, queries["split"]).stack().items() if n
        },
        "queries_per_builder": _counts(queries["query_builder"]),
        "llm_fallbacks": dict(llm_counts),
        "shared_requests": shared_report,
        **overlap,
        "repurchases_dropped": {"total": int(sum(repurchases.values())), "per_source": repurchases},
        "pool_size": int(len(items)),
        "pool_per_category": _counts(items["category"]),
        "pool": pool_report,
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
