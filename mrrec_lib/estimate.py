"""`mrrec estimate`: what each stage of a config will cost, before launching it.

Sizes come from the run folder's stage-01 tables when they exist, else from a
committed record with the same stage-01 hash, else from the sources themselves (the
shared files are counted; Amazon-C4 uses the sizes the paper and the dataset card
state). Times come first from the committed records (`recorded_costs`: a stage
hash a record shares costs what it cost there; otherwise the records' seconds per
evaluated request, SFT step and GRPO completion), then from
`benchmarks/throughput.json`, measured on this 2-core CPU machine by the scripts in
`benchmarks/` (each entry names its command). Every row says which it used. GPU
configs get token counts and sizes, and CPU times marked as such: no GPU was
available to measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mrrec_lib.config import Config, load_config
from mrrec_lib.recorded_costs import RecordedCosts, recorded_costs
from mrrec_lib.runs import project_root, resolve, shared_data_path
from mrrec_lib.stages import stage_hash

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
    test_queries: int | None = None  # known once stage 01 has split the queries


def _throughput() -> dict:
    f = project_root() / "benchmarks" / "throughput.json"
    if not f.exists():
        raise FileNotFoundError(f"{f} is missing: run the scripts in benchmarks/ (see benchmarks/README.md)")
    return json.loads(f.read_text())


def _sizes(cfg: Config, recorded: RecordedCosts) -> Sizes:
    data = resolve(cfg.outputs_dir) / cfg.run_name / "data"
    if (data / "queries.parquet").exists():
        import pandas as pd

        q = pd.read_parquet(data / "queries.parquet")
        it = pd.read_parquet(data / "items.parquet", columns=["item_id"])
        inter = pd.read_parquet(data / "interactions.parquet", columns=["user_id"])
        return Sizes(len(it), len(q), int((q["split"] == "train").sum()), q["user_id"].nunique(), len(inter),
                     q["category"].nunique(), f"stage-01 tables of {data.parent}", int((q["split"] == "test").sum()))
    rec = recorded.sizes.get(stage_hash(cfg, "01"))
    if rec is not None:
        return Sizes(rec.items, rec.queries, rec.train_queries, rec.users, rec.interactions, rec.categories,
                     f"stage-01 counts of the record results/{rec.run} (same stage-01 hash)", rec.test_queries)
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


def _eval_seconds_per_request(
    cfg: Config, n_eval: int, items: int, tp: dict, rec: RecordedCosts, measured: bool
) -> tuple[dict[str, float], str]:
    """Stage 05 per system, in seconds per request: the records' measurement where they have one, else generated
    tokens at benchmark speed, plus every system's exact search. Per system, so that a paused evaluation is priced
    by the rows each system still lacks (`study_cost.resumed_seconds`)."""
    qps, llm_tps = tp["exact_search_qps"]["value"], tp["llm_tokens_per_s"]["value"]
    search = 1 / qps * (items / C4_ITEMS)
    per_request, from_records = {}, []
    for system in cfg.eval_systems:
        per_request[system] = search
        if measured and system in rec.seconds_per_request:
            per_request[system] += rec.seconds_per_request[system]
            from_records.append(system)
        elif not system.startswith(("query_", "template_")):
            per_request[system] += cfg.max_new_tokens_total / llm_tps
    if not from_records:
        return per_request, "benchmarks"
    rest = len(cfg.eval_systems) - len(from_records)
    return per_request, f"records' s/request of {len(from_records)} systems" + (f", benchmarks for {rest}" if rest else "")


def estimate(params: list[str | Path], results_dir: str | Path | None = None) -> dict:
    """Per-stage tokens, seconds and embedding bytes of a config; `results_dir` (default results/) holds the records."""
    cfg = load_config(*params)
    tp = _throughput()
    rec = recorded_costs(resolve(results_dir) if results_dir is not None else project_root() / "results")
    # Records price only what they measured: the same policy model on this CPU machine.
    measured = cfg.device != "cuda" and cfg.policy_model in rec.models
    s = _sizes(cfg, rec)
    llm_tps = tp["llm_tokens_per_s"]["value"]
    enc_ips = tp["encoder_items_per_s"]["value"]
    dim = ENCODER_DIMS.get(cfg.encoder_model, 1024)
    rows = []

    q_llm = cfg.query_builder == "llm"
    rows.append({"stage": "01 data", "input_tokens": s.queries * 2 * TOKENS["query_in"] if q_llm else 0,
                 "output_tokens": s.queries * 2 * TOKENS["query_out"] if q_llm else 0,
                 "seconds": (s.queries * 2 * TOKENS["query_out"] / llm_tps) if q_llm else 10.0, "bytes": 0,
                 "basis": "benchmarks"})

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
                 "seconds": mem_seconds, "bytes": emb_bytes + entries * dim * 4, "basis": "benchmarks",
                 "api_cost_usd": (mem_in + glob_in) / 1e6 * cfg.price_per_m_input_tokens + (mem_out + glob_out) / 1e6 * cfg.price_per_m_output_tokens})

    sft_steps = cfg.sft_max_steps if cfg.sft_max_steps > 0 else int(cfg.sft_epochs * s.train_queries / max(cfg.sft_batch_size, 1))
    sft_step, sft_basis = ((rec.sft_seconds_per_step, "records' s/SFT step") if measured and rec.sft_seconds_per_step
                           else (tp["sft_seconds_per_step"]["value"], "benchmarks"))
    rows.append({"stage": "03 sft", "input_tokens": 0, "output_tokens": 0, "bytes": 0,
                 "seconds": (sft_steps * sft_step) if cfg.sft_enabled else 0.0, "basis": sft_basis})

    steps = cfg.grpo_max_steps if cfg.grpo_max_steps > 0 else int(cfg.grpo_epochs * s.train_queries / max(cfg.grpo_batch_prompts, 1))
    completions = steps * cfg.grpo_num_generations * cfg.grpo_batch_prompts
    gen_tokens = completions * cfg.grpo_max_completion_length
    if measured and rec.grpo_seconds_per_completion:
        validations = (1 + steps // cfg.grpo_eval_every) * cfg.grpo_eval_queries if cfg.grpo_eval_every > 0 else 0
        per_request = rec.seconds_per_request.get("mrrec", rec.seconds_per_request.get("mrrec_sft", 0.0))
        grpo_seconds, grpo_basis = completions * rec.grpo_seconds_per_completion + validations * per_request, "records' s/GRPO completion"
    else:
        grpo = tp["grpo_seconds_per_step"]
        grpo_seconds = gen_tokens * grpo["value"] / (grpo["completions"] * grpo["completion_tokens"])
        grpo_basis = "benchmarks"
    rows.append({"stage": "04 grpo", "input_tokens": completions * TOKENS["rollout_prompt"], "output_tokens": gen_tokens,
                 "seconds": grpo_seconds if cfg.grpo_enabled else 0.0, "bytes": 0, "basis": grpo_basis})

    n_test = s.test_queries or cfg.split_test_queries or int(s.queries * cfg.split_ratios[2] / sum(cfg.split_ratios))
    n_eval = min(cfg.eval_max_queries, n_test) if cfg.eval_max_queries > 0 else n_test
    llm_systems = sum(1 for x in cfg.eval_systems if not x.startswith(("query_", "template_")))
    eval_per_request, eval_basis = _eval_seconds_per_request(cfg, n_eval, s.items, tp, rec, measured)
    eval_seconds = n_eval * sum(eval_per_request.values())
    rows.append({"stage": "05 eval", "input_tokens": n_eval * llm_systems * TOKENS["rollout_prompt"],
                 "output_tokens": n_eval * llm_systems * cfg.max_new_tokens_total, "seconds": eval_seconds, "bytes": 0,
                 "basis": eval_basis})

    if measured:
        for row in rows:
            found = rec.measured(row["stage"][:2], stage_hash(cfg, row["stage"][:2]))
            if found is not None:
                row["seconds"], row["basis"] = found[0], f"measured: results/{found[1]} (same stage hash)"
    return {"config": [str(p) for p in params], "sizes": s.__dict__, "encoder_dim": dim, "device": cfg.device,
            "measured_on": tp.get("machine", "this machine"), "records": rec.runs, "rows": rows,
            "eval_work": {"requests": n_eval, "seconds_per_request": eval_per_request}}


def format_estimate(est: dict) -> str:
    s = est["sizes"]
    lines = [
        f"config: {' + '.join(est['config'])}",
        f"sizes ({s['source']}): {s['items']:,} items, {s['queries']:,} queries ({s['train_queries']:,} train), "
        f"{s['users']:,} users, {s['interactions']:,} interactions, {s['categories']} categories",
        f"speeds measured on: {est['measured_on']}"
        + ("  [device: cuda requested — times below are CPU figures; no GPU measurement exists]" if est["device"] == "cuda" else ""),
        "",
        f"{'stage':<11}{'input tok':>14}{'output tok':>14}{'time':>12}{'embeddings':>13}{'API $':>10}  time from",
    ]
    for r in est["rows"]:
        cost = f"{r['api_cost_usd']:.2f}" if "api_cost_usd" in r else "-"
        lines.append(f"{r['stage']:<11}{r['input_tokens']:>14,}{r['output_tokens']:>14,}{_hours(r['seconds']):>12}"
                     f"{r['bytes'] / 2**30:>11.2f}GB{cost:>10}  {r['basis']}")
    total = sum(r["seconds"] for r in est["rows"])
    lines.append(f"{'total':<11}{'':>28}{_hours(total):>12}")
    return "\n".join(lines)
