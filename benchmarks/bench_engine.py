"""Old vs new policy decoding on the same requests: MR.Rec requests/min, tokens/s and answer agreement.

Loads a trained policy of a finished run (default: the SFT policy of `outputs/default-sft-subset`), takes the
first `--queries` test requests of that run, and rolls the policy out greedily (evaluation's decoding: up to
`max_tool_calls` memory calls) once per setting `engine[:batch]`: `generate` is the turn-synchronous
reference (one HF generate() per turn, the whole conversation re-encoded each turn), `kv` the continuous-batching
KV engine with the same weights; an optional second field sets the batch (`kv:16`). Agreement is measured
against the first setting: identical completion ids, identical parsed profile. Writes `benchmarks/rollout.json`
(`before` = the first setting, `after` = the others) with the load average and the command.

    .venv/bin/python benchmarks/bench_engine.py --run outputs/default-sft-subset --queries 16 \\
        --settings generate kv kv:16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from before_after import write_before_after

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _measure(policy, cfg, queries, store) -> tuple[dict, list]:
    from mrrec_lib.agent.run import run_policy_on_queries

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    trajs, _ = run_policy_on_queries(queries, policy, cfg, store=store, progress=True)
    seconds = time.perf_counter() - start
    n = len(trajs)
    new = sum(t.n_new_tokens for t in trajs)
    return {
        "requests": n,
        "seconds": round(seconds, 1),
        "requests_per_min": round(60 * n / seconds, 2),
        "generated_tokens": new,
        "generated_tokens_per_s": round(new / seconds, 1),
        "mean_prompt_tokens": round(sum(len(t.prompt_ids) for t in trajs) / n, 1),
        "mean_tool_calls": round(sum(t.n_tool_calls for t in trajs) / n, 2),
        "format_valid_rate": round(sum(t.parse_ok for t in trajs) / n, 3),
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "engine_stats": dict(getattr(policy, "_engine", None).stats) if getattr(policy, "_engine", None) else None,
    }, trajs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="outputs/default-sft-subset", help="a run folder with a trained policy")
    ap.add_argument("--policy", default="sft", help="sft | grpo | recr1 | base")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="rollout_batch_size (rows decoded together)")
    ap.add_argument("--settings", nargs="+", default=["generate", "kv", "kv:16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/rollout.json")
    args = ap.parse_args()

    import torch

    from mrrec_lib.agent.policy import LocalPolicy, decoding_model
    from mrrec_lib.config import load_config
    from mrrec_lib.data.schema import read_table
    from mrrec_lib.memory.store import MemoryStore
    from mrrec_lib.runs import run_paths
    from mrrec_lib.train.checkpoints import load_policy

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    base = load_config(run / "config.yaml", overrides={"rollout_temperature": 0.0, "rollout_batch_size": args.batch})
    paths = run_paths(base)
    queries = read_table(paths.data, "queries")
    queries = queries[queries["split"] == "test"].head(args.queries)
    store = MemoryStore.load(base, paths)

    results, reference = {}, None
    for setting in args.settings:
        engine, *batch = setting.split(":")
        cfg = base.model_copy(update={"rollout_engine": engine, "rollout_batch_size": int((batch or [args.batch])[0])})
        model, tok = load_policy(cfg, paths, args.policy)
        policy = LocalPolicy.for_model(decoding_model(model), tok, cfg)
        block, trajs = _measure(policy, cfg, queries, store)
        if reference is None:
            reference = trajs
        else:
            same_ids = [a.completion_ids == b.completion_ids for a, b in zip(reference, trajs, strict=True)]
            same_profile = [a.profile == b.profile for a, b in zip(reference, trajs, strict=True)]
            block["identical_completions_vs_before"] = f"{sum(same_ids)}/{len(same_ids)}"
            block["identical_profiles_vs_before"] = f"{sum(same_profile)}/{len(same_profile)}"
            block["speedup_vs_before"] = round(
                block["requests_per_min"] / results[args.settings[0]]["requests_per_min"], 2
            )
        results[setting] = block
        print(setting, json.dumps(block), flush=True)
        del policy, model

    write_before_after(
        args.out,
        "bench_engine.py",
        {
            "policy": f"{run}/{args.policy}",
            "max_tool_calls": base.max_tool_calls,
            "max_new_tokens_total": base.max_new_tokens_total,
            "rollout_batch_size": args.batch,
        },
        results,
        args.threads,
    )


if __name__ == "__main__":
    main()
