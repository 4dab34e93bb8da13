"""Global memory: the personalization aspects users weigh in each category, learned from train queries only.

(A) For sampled train queries, the purchase is contrasted with its nearest
same-category items the user did not buy, giving aspects per query.
(B) Per category, the aspects of all sampled queries are merged into
`{Aspect Name: [descriptions]}`. Both steps have an LLM and an extractive
builder; a malformed LLM reply is retried once and then replaced by the
extractive result. Finished queries and categories are appended to
`parts/global_<builder>_<digest>.jsonl`, so a killed build resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.llm import ChatLLM, default_sampling
from mrrec_lib.memory.extractive import ExtractiveGlobal, item_dict, merge_aspects
from mrrec_lib.memory.llm_steps import Outcome, run_llm_step, usage_delta, usage_of
from mrrec_lib.memory.local import parts_file
from mrrec_lib.memory.prompts import merge_messages, parse_merged, parse_query_aspects, query_aspect_messages
from mrrec_lib.memory.stats import BuildStats, add_costs
from mrrec_lib.memory.text import content_hash
from mrrec_lib.runs import RunPaths, append_jsonl, read_jsonl, write_json, write_parquet

log = logging.getLogger(__name__)
GLOBAL_COLUMNS = ["category", "aspect", "text"]
GLOBAL_KEYS = [
    "global_num_negatives",
    "global_queries_per_category",
    "global_max_descriptions",
    "global_merge_max_lines",
    "encoder_model",
    "llm_backend",
    "llm_model",
    "llm_temperature",
    "llm_max_new_tokens",
    "seed",
]


@dataclass
class GlobalResult:
    aspects: dict[str, dict[str, list[str]]]
    entries: pd.DataFrame
    per_query: pd.DataFrame  # qid, user_id, category, status, result (the step-A JSON)
    stats: BuildStats


def sample_global_queries(queries: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Up to `global_queries_per_category` train queries per category; val/test never feed global memory."""
    train = queries[queries["split"] == "train"]
    picked = [
        grp.sample(n=min(len(grp), cfg.global_queries_per_category), random_state=cfg.seed)
        for _, grp in train.groupby("category", sort=True)
    ]
    if not picked:
        log.warning("no train queries: global memory will be empty")
        return train.iloc[:0].copy()
    return pd.concat(picked).sort_values(["category", "qid"], kind="stable").reset_index(drop=True)


def nearest_negatives(
    cfg: Config,
    sampled: pd.DataFrame,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    item_emb: np.ndarray,
) -> dict[str, list[str]]:
    """Per query: the `global_num_negatives` items of the purchase's category closest to it that the user never
    bought: the alternatives the user passed over. `item_emb` row i embeds `items` row i (the item retriever's
    cached pool embeddings, so the pool is encoded once for the whole run)."""
    if len(item_emb) != len(items):
        raise ValueError(f"{len(item_emb)} item embeddings for {len(items)} items: pass the pool's embeddings")
    bought = interactions.groupby("user_id")["item_id"].agg(set).to_dict()
    ids = items["item_id"].astype(str).to_numpy()
    cats = items["category"].astype(str).to_numpy()
    pos = {item: i for i, item in enumerate(ids)}
    out: dict[str, list[str]] = {}
    for q in sampled.itertuples():
        t = pos.get(q.target_item_id)
        if t is None:
            continue
        pool = np.flatnonzero(cats == cats[t])
        sims = np.asarray(item_emb[pool] @ item_emb[t])
        exclude = bought.get(q.user_id, set()) | {q.target_item_id}
        order = pool[np.argsort(-sims, kind="stable")]
        out[q.qid] = [str(ids[j]) for j in order if ids[j] not in exclude][: cfg.global_num_negatives]
    return out


def build_global_memory(
    cfg: Config,
    sampled: pd.DataFrame,
    items: pd.DataFrame,
    negatives: dict[str, list[str]],
    parts_dir: Path,
    builder: str | None = None,
    llm: ChatLLM | None = None,
) -> GlobalResult:
    """Steps (A) and (B) over the sampled train queries, resuming from the builder's parts file."""
    builder = builder or cfg.memory_builder
    if builder == "llm" and llm is None:
        raise ValueError("memory_builder='llm' needs an LLM: pass llm=make_llm(cfg)")
    path = parts_file(cfg, parts_dir, "global", builder, GLOBAL_KEYS)
    done = {r["key"]: r for r in read_jsonl(path)}
    extractive = ExtractiveGlobal(items)
    by_id = {r["item_id"]: item_dict(r) for r in items.drop_duplicates("item_id").to_dict("records")}

    inputs: dict[str, tuple] = {}
    meta: list[tuple[str, str, str, str]] = []  # key, qid, user_id, category
    skipped = 0
    for q in sampled.itertuples():
        purchase = by_id.get(q.target_item_id)
        if purchase is None or q.qid not in negatives:
            skipped += 1
            continue
        negs = [by_id[i] for i in negatives[q.qid]]
        args = (q.category, q.query, purchase, negs)
        key = content_hash(["query", builder, *args])
        inputs[key] = args
        meta.append((key, q.qid, q.user_id, q.category))

    def extract(key: str) -> dict:
        return extractive.query_aspects(*inputs[key])

    def query_messages(key: str) -> list:
        return query_aspect_messages(*inputs[key])

    def query_parse(key: str, text: str) -> dict | None:
        return parse_query_aspects(text, inputs[key][0], inputs[key][2]["subcategory"])

    todo = [k for k in dict.fromkeys(m[0] for m in meta) if k not in done]
    size = max(1, cfg.llm_batch_size if builder == "llm" else len(todo))
    for i in tqdm(range(0, len(todo), size), desc=f"global aspects ({builder})", unit="batch"):
        batch = todo[i : i + size]
        outcomes = _timed(llm, batch, lambda ks: _step(builder, llm, ks, extract, query_messages, query_parse, cfg))
        _append(path, "query", outcomes, done)

    per_query = pd.DataFrame(
        [
            {"qid": qid, "user_id": u, "category": c, "status": done[k]["status"], "result": done[k]["value"]}
            for k, qid, u, c in meta
        ],
        columns=["qid", "user_id", "category", "status", "result"],
    )
    merge_inputs: dict[str, tuple[str, list[dict]]] = {}
    cat_keys: dict[str, str] = {}
    for cat, grp in per_query.groupby("category", sort=True):
        results = grp["result"].tolist()
        key = content_hash(["merge", builder, cat, results, cfg.global_max_descriptions, cfg.global_merge_max_lines])
        merge_inputs[key] = (str(cat), results)
        cat_keys[str(cat)] = key

    def merge_extractive(key: str) -> dict[str, list[str]]:
        return merge_aspects(merge_inputs[key][1], cfg.global_max_descriptions)

    def merge_prompt(key: str) -> list:
        return merge_messages(merge_inputs[key][0], _cap_lines(merge_extractive(key), cfg.global_merge_max_lines))

    def merge_parse(_key: str, text: str) -> dict[str, list[str]] | None:
        return parse_merged(text, cfg.global_max_descriptions)

    pending = [k for k in merge_inputs if k not in done]
    if pending:
        outcomes = _timed(
            llm, pending, lambda ks: _step(builder, llm, ks, merge_extractive, merge_prompt, merge_parse, cfg)
        )
        _append(path, "category", outcomes, done)

    aspects = {cat: done[k]["value"] for cat, k in cat_keys.items()}
    entries = global_entries(aspects)
    used = [m[0] for m in meta] + list(cat_keys.values())
    stats = BuildStats(
        memory="global",
        builder=builder,
        source_users=per_query["user_id"].nunique(),
        units=len(per_query),
        entries=len(entries),
        skipped=skipped,
    )
    add_costs(stats, [done[k]["cost"] for k in dict.fromkeys(used)])
    for k in dict.fromkeys(used):
        stats.statuses[done[k]["status"]] = stats.statuses.get(done[k]["status"], 0) + 1
    stats.reused = len(used) - len(set(used))
    return GlobalResult(aspects, entries, per_query, stats)


def _cap_lines(collected: dict[str, list[str]], max_lines: int) -> dict[str, list[str]]:
    """Keep the most frequent aspects' descriptions up to `max_lines` prompt lines (context windows are finite)."""
    out: dict[str, list[str]] = {}
    n = 0
    for name, descs in collected.items():
        take = descs[: max(0, max_lines - n)]
        if not take:
            break
        out[name] = take
        n += len(take)
    return out


def _step(builder, llm, keys, extract, messages, parse, cfg) -> dict[str, Outcome]:
    if builder == "extractive":
        return {k: Outcome(extract(k), "extractive") for k in keys}
    return run_llm_step(llm, {k: messages(k) for k in keys}, parse, extract, default_sampling(cfg))


def _append(path: Path, kind: str, outcomes: dict[str, tuple[Outcome, dict]], done: dict[str, dict]) -> None:
    rows = [{"kind": kind, "key": k, "value": o.value, "status": o.status, "cost": c} for k, (o, c) in outcomes.items()]
    append_jsonl(path, rows)
    done.update({r["key"]: r for r in rows})


def _timed(llm, keys, run) -> dict[str, tuple[Outcome, dict]]:
    """Run a step and split its time and token usage evenly over its units."""
    start, before = time.perf_counter(), usage_of(llm)
    outcomes = run(keys)
    spent = usage_delta(before, usage_of(llm))
    spent["seconds"] = time.perf_counter() - start
    share = {f: v / max(1, len(keys)) for f, v in spent.items()}
    return {k: (o, share) for k, o in outcomes.items()}


def global_entries(aspects: dict[str, dict[str, list[str]]]) -> pd.DataFrame:
    """One retrievable entry per (category, aspect, description)."""
    rows = [
        [cat, a, f"{a}: {d}"] for cat, by_aspect in aspects.items() for a, descs in by_aspect.items() for d in descs
    ]
    return pd.DataFrame(rows, columns=GLOBAL_COLUMNS).astype("string")


def write_global_memory(paths: RunPaths, result: GlobalResult) -> None:
    """The stage outputs `global_aspects.json` and `global_entries.parquet`, each written atomically."""
    write_json(paths.memory / "global_aspects.json", result.aspects)
    write_parquet(result.entries, paths.memory / "global_entries.parquet")
