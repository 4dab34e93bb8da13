"""Rollout throughput of the policy on real queries: rollouts/s and tokens/s for one batch generated together.

Runs stages 01-02 for the run (via the project runner) if they are missing, then rolls the local policy out on
the first `--queries` queries of a split with the run's memory tool and item retriever, saves the trajectories
with their rewards as JSONL under the run's logs/, and writes the measurements to metrics/bench_rollout.json.

    .venv/bin/python benchmarks/bench_rollout.py --params params/smoke.yaml --queries 4 --batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params/smoke.yaml")
    ap.add_argument("--run-name", default="bench_rollout")
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4, help="rollouts generated together (rollout_batch_size)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--temperature", type=float, default=None, help="default: the config's rollout_temperature")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from mrrec_lib.agent.policy import LocalPolicy
    from mrrec_lib.agent.run import run_policy_on_queries
    from mrrec_lib.config import load_config
    from mrrec_lib.data.schema import read_table
    from mrrec_lib.memory.store import MemoryStore
    from mrrec_lib.retrieval.items import ItemRetriever
    from mrrec_lib.runner import run
    from mrrec_lib.runs import run_paths, write_json

    overrides = {"run_name": args.run_name, "rollout_batch_size": args.batch}
    if args.temperature is not None:
        overrides["rollout_temperature"] = args.temperature
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.params, overrides=overrides)
    paths = run_paths(cfg)
    if not (paths.memory / "local_entries.parquet").exists():
        run([args.params], only="01,02", overrides=overrides)

    queries = read_table(paths.data, "queries")
    split = queries[queries["split"] == args.split]
    sample = (split if len(split) >= args.queries else queries).head(args.queries).reset_index(drop=True)
    store = MemoryStore.load(cfg, paths)
    retriever = ItemRetriever.from_run(cfg, paths)
    t0 = time.perf_counter()
    policy = LocalPolicy.from_config(cfg)
    load_s = time.perf_counter() - t0

    out = paths.logs / "bench_rollout_trajectories.jsonl"
    out.unlink(missing_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    trajs, rewards = run_policy_on_queries(sample, policy, cfg, store=store, retriever=retriever, out_path=out)
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()

    new_tokens = sum(t.n_new_tokens for t in trajs)
    completion_tokens = sum(t.n_completion_tokens for t in trajs)
    metrics = {
        "command": f"python benchmarks/bench_rollout.py --params {args.params} --queries {args.queries} "
        f"--batch {args.batch} --threads {args.threads}",
        "model": cfg.policy_model,
        "rollouts": len(trajs),
        "batch_size": args.batch,
        "seconds": round(seconds, 2),
        "model_load_seconds": round(load_s, 2),
        "rollouts_per_s": round(len(trajs) / seconds, 4),
        "generated_tokens": new_tokens,
        "generated_tokens_per_s": round(new_tokens / seconds, 2),
        "completion_tokens_incl_tool_results": completion_tokens,
        "mean_prompt_tokens": round(sum(len(t.prompt_ids) for t in trajs) / len(trajs), 1),
        "mean_tool_calls": round(sum(t.n_tool_calls for t in trajs) / len(trajs), 2),
        "parse_rate": round(sum(t.parse_ok for t in trajs) / len(trajs), 3),
        "finish_reasons": pd.Series([t.finish_reason for t in trajs]).value_counts().to_dict(),
        "mean_reward": round(sum(r.total for r in rewards) / len(rewards), 4),
        "limits": {k: getattr(cfg, k) for k in ("max_tool_calls", "max_new_tokens_total", "max_new_tokens_per_turn")},
        "temperature": cfg.rollout_temperature,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "machine": platform.processor() or platform.machine(),
        "trajectories": str(out),
    }
    write_json(paths.metrics_file("bench_rollout"), metrics)
    print(json.dumps(metrics, indent=2))
    print(f"trajectories + rewards: {Path(out)}")


if __name__ == "__main__":
    main()
