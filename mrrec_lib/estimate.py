"""`mrrec estimate`: what each stage of a config will cost, before launching it.

Sizes come from the run folder's stage-01 tables when they exist, else from the
sources themselves (the shared files are counted; Amazon-C4 uses the sizes the
paper and the dataset card state). Speeds come from `benchmarks/throughput.json`,
measured on this 2-core CPU machine by the scripts in `benchmarks/` (each entry
names its command). GPU configs get token counts and sizes, and CPU times marked
as such: no GPU was available to measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mrrec_lib.config import Config, load_config
from mrrec_lib.runs import project_root, resolve, shared_data_path

# Amazon-C4 test split and item pool (dataset card); interactions per user from the paper's Table 5
# (577,376 interactions / 6,039 users).
C4_QUERIES = 21_223
C4_ITEMS = 1_058_417
C4_INTERACTIONS_PER_USER = 577_376 / 6_039

# Embedding widths of encoders we know; others are assumed 1024 wide (an upper bound for common ones).
ENCODER_DIMS = {"all-MiniLM-L6-v2": 384, "Qwen/Qwen3-Embedding-0.6B": 1024, "BAAI/bge-m3": 1024}

# Rough per-call token sizes of the LLM steps, from the prompts in mrrec_lib (rendered on the default data).
TOKENS = {
    "query_in": 350, "query_out": 60,
    "pattern_in": 900, "pattern_out": 180, "profile_in": 700, "profile_out": 220,
    "global_in": 1500, "global_out": 300, "merge_in": 3000, "merge_out": 600,
    "rollout_prompt": 700,
}


@dataclass
class Sizes:
    items: int
    queries: int
    train_queries: int
    users: int
    interactions: int
    categories: int
    source: str


def _throughput() -> dict:
    f = project_root() / "benchmarks" / "throughput.json"
    if not f.exists():
        raise FileNotFoundError(f"{f} is missing: run the scripts in benchmarks/ (see benchmarks/README.md)")
    return json.loads(f.read_text())


def _sizes(cfg: Config) -> Sizes:
    data = resolve(cfg.outputs_dir) / cfg.run_name / "data"
    if (data / "queries.parquet").exists():
        import pandas as pd

        q = pd.read_parquet(data / "queries.parquet")
        it = pd.read_parquet(data / "items.parquet", columns=["item_id"])
        inter = pd.read_parquet(data / "interactions.parquet", columns=["user_id"])
        return Sizes(len(it), len(q), int((q["split"] == "train").sum()), q["user_id"].nunique(), len(inter),
                     q["category"].nunique(), f"stage-01 tables of {data.parent}")
    users = queries = items = interactions = cats = 0
    for src in cfg.sources:
        if src == "amazon_c4":
            n = C4_QUERIES
            users += n
            queries += n
            items += C4_ITEMS
            interactions += int(n * C4_INTERACTIONS_PER_USER)
            cats += 28 if not cfg.amazon_c4_categories else len(cfg.amazon_c4_categories)
        elif src == "agenticshop":
            for rel in cfg.agenticshop_files:
                d = json.loads(shared_data_path(cfg, rel).read_text())
                hist = sum(len(v[1].get("review", [])) for v in d.values())
                users += len(d)
                queries += len(d)
                interactions += hist
                items += hist + len(d)
                cats += 1
        elif src == "amazon2023_reviews":
            for rel in cfg.amazon2023_reviews_files:
                lines = shared_data_path(cfg, rel).read_text().splitlines()
                users += len(lines)
                queries += len(lines) * (1 + cfg.extra_queries_per_user)
                n_hist = sum(line.count('"rating"') for line in lines)
                interactions += n_hist
                items += n_hist
                cats += 1
    if cfg.max_users and users > cfg.max_users:
        scale = cfg.max_users / users
        users, queries, interactions, items = cfg.max_users, int(queries * scale), int(interactions * scale), int(items * scale)
    if cfg.max_queries:
        queries = min(queries, cfg.max_queries)
    return Sizes(items, queries, int(queries * cfg.split_ratios[0] / sum(cfg.split_ratios)), users, interactions, cats,
                 "counted from the source files (before filtering)")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def estimate(params: list[str | Path]) -> dict:
    cfg = load_config(*params)
    tp = _throughput()
    s = _sizes(cfg)
    llm_tps = tp["llm_tokens_per_s"]["value"]
    enc_ips = tp["encoder_items_per_s"]["value"]
    qps = tp["exact_search_qps"]["value"]
    dim = ENCODER_DIMS.get(cfg.encoder_model, 1024)
    rows = []

    q_llm = cfg.query_builder == "llm"
    rows.append({"stage": "01 data", "input_tokens": s.queries * 2 * TOKENS["query_in"] if q_llm else 0,
                 "output_tokens": s.queries * 2 * TOKENS["query_out"] if q_llm else 0,
                 "seconds": (s.queries * 2 * TOKENS["query_out"] / llm_tps) if q_llm else 10.0, "bytes": 0})

    snapshots = s.queries
    llm_mem = cfg.memory_builder == "llm"
    cats_per_snapshot = min(3, s.categories) or 1
    mem_in = snapshots * (cats_per_snapshot * TOKENS["pattern_in"] + TOKENS["profile_in"]) if llm_mem else 0
    mem_out = snapshots * (cats_per_snapshot * TOKENS["pattern_out"] + TOKENS["profile_out"]) if llm_mem else 0
    glob_n = min(s.train_queries, cfg.global_queries_per_category * max(s.categories, 1))
    glob_in = (glob_n * TOKENS["global_in"] + s.categories * TOKENS["merge_in"]) if llm_mem else 0
    glob_out = (glob_n * TOKENS["global_out"] + s.categories * TOKENS["merge_out"]) if llm_mem else 0
    emb_bytes = s.items * dim * 4
    entries = int(s.interactions * 1.5)
    mem_seconds = s.items / enc_ips + entries / enc_ips + ((mem_out + glob_out) / llm_tps if llm_mem else snapshots * tp["extractive_seconds_per_snapshot"]["value"])
    rows.append({"stage": "02 memory", "input_tokens": mem_in + glob_in, "output_tokens": mem_out + glob_out,
                 "seconds": mem_seconds, "bytes": emb_bytes + entries * dim * 4,
                 "api_cost_usd": (mem_in + glob_in) / 1e6 * cfg.price_per_m_input_tokens + (mem_out + glob_out) / 1e6 * cfg.price_per_m_output_tokens})

    sft_steps = cfg.sft_max_steps if cfg.sft_max_steps > 0 else int(cfg.sft_epochs * s.train_queries / max(cfg.sft_batch_size, 1))
    rows.append({"stage": "03 sft", "input_tokens": 0, "output_tokens": 0, "bytes": 0,
                 "seconds": (sft_steps * tp["sft_seconds_per_step"]["value"]) if cfg.sft_enabled else 0.0})

    grpo = tp["grpo_seconds_per_step"]
    per_step = grpo["value"] * (cfg.grpo_num_generations * cfg.grpo_batch_prompts * cfg.grpo_max_completion_length) / (
        grpo["completions"] * grpo["completion_tokens"])
    steps = cfg.grpo_max_steps if cfg.grpo_max_steps > 0 else int(cfg.grpo_epochs * s.train_queries / max(cfg.grpo_batch_prompts, 1))
    gen_tokens = steps * cfg.grpo_num_generations * cfg.grpo_batch_prompts * cfg.grpo_max_completion_length
    rows.append({"stage": "04 grpo", "input_tokens": steps * cfg.grpo_num_generations * cfg.grpo_batch_prompts * TOKENS["rollout_prompt"],
                 "output_tokens": gen_tokens, "seconds": steps * per_step if cfg.grpo_enabled else 0.0, "bytes": 0})

    n_test = cfg.split_test_queries or int(s.queries * cfg.split_ratios[2] / sum(cfg.split_ratios))
    n_eval = min(cfg.eval_max_queries, n_test) if cfg.eval_max_queries > 0 else n_test
    llm_systems = sum(1 for x in cfg.eval_systems if not x.startswith(("query_", "template_")))
    eval_out = n_eval * llm_systems * cfg.max_new_tokens_total
    rows.append({"stage": "05 eval", "input_tokens": n_eval * llm_systems * TOKENS["rollout_prompt"], "output_tokens": eval_out,
                 "seconds": eval_out / llm_tps + n_eval * len(cfg.eval_systems) / qps * (s.items / C4_ITEMS), "bytes": 0})
    return {"config": [str(p) for p in params], "sizes": s.__dict__, "encoder_dim": dim, "device": cfg.device,
            "measured_on": tp.get("machine", "this machine"), "rows": rows}


def format_estimate(est: dict) -> str:
    s = est["sizes"]
    lines = [
        f"config: {' + '.join(est['config'])}",
        f"sizes ({s['source']}): {s['items']:,} items, {s['queries']:,} queries ({s['train_queries']:,} train), "
        f"{s['users']:,} users, {s['interactions']:,} interactions, {s['categories']} categories",
        f"speeds measured on: {est['measured_on']}"
        + ("  [device: cuda requested — times below are CPU figures; no GPU measurement exists]" if est["device"] == "cuda" else ""),
        "",
        f"{'stage':<11}{'input tok':>14}{'output tok':>14}{'time':>12}{'embeddings':>13}{'API $':>10}",
    ]
    for r in est["rows"]:
        cost = f"{r['api_cost_usd']:.2f}" if "api_cost_usd" in r else "-"
        lines.append(f"{r['stage']:<11}{r['input_tokens']:>14,}{r['output_tokens']:>14,}{_hours(r['seconds']):>12}"
                     f"{r['bytes'] / 2**30:>11.2f}GB{cost:>10}")
    total = sum(r["seconds"] for r in est["rows"])
    lines.append(f"{'total':<11}{'':>28}{_hours(total):>12}")
    return "\n".join(lines)
