"""GRPO seconds per step with TRL's own tool loop vs the KV-engine `rollout_func`, same policy, data and shape.

Runs stage 04 (`train_grpo`) for `--steps` steps per setting on a finished run's data, memory and SFT policy
(linked, not copied, into `outputs/bench-grpo-<setting>`), validation off, and reads the per-step log: seconds,
reward, memory calls per rollout, completion length. A setting is `engine[:prompts x generations]`, e.g.
`generate`, `kv`, `kv:8x4`. Writes `benchmarks/grpo.json` (`before` = the first setting) with the load average.

    .venv/bin/python benchmarks/bench_grpo.py --run outputs/default-sft-subset --steps 3 --settings generate kv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from before_after import write_before_after

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _linked_run(source: Path, root: Path) -> None:
    """A fresh run folder whose data, memory and SFT policy are the source run's."""
    if root.exists():
        shutil.rmtree(root)
    (root / "models").mkdir(parents=True)
    for part in ("data", "memory", "models/sft"):
        (root / part).symlink_to((source / part).resolve(), target_is_directory=True)


def _measure(cfg, steps_log: Path, seconds: float) -> dict:
    import numpy as np

    from mrrec_lib.runs import read_jsonl

    by_step: dict[int, dict] = {}
    for row in read_jsonl(steps_log):  # the trainer's closing summary repeats the last step: keep the first row
        if row.get("step_seconds") is not None and "loss" in row:
            by_step.setdefault(row["step"], row)
    steps = [by_step[k] for k in sorted(by_step)]
    per_step = [round(s["step_seconds"], 1) for s in steps]

    def mean(key: str) -> float | None:
        vals = [s[key] for s in steps if s.get(key) is not None]
        return round(float(np.mean(vals)), 3) if vals else None

    return {
        "prompts_x_generations": f"{cfg.grpo_batch_prompts}x{cfg.grpo_num_generations}",
        "steps": len(steps),
        "step_seconds": per_step,
        "step_seconds_mean": round(float(np.mean(per_step)), 1) if per_step else None,
        "seconds_per_completion": round(
            float(np.mean(per_step)) / (cfg.grpo_batch_prompts * cfg.grpo_num_generations), 1
        )
        if per_step
        else None,
        "stage_seconds": round(seconds, 1),
        "rollout_seconds_mean": mean("timing/rollout_seconds"),  # kv only: generation inside the step
        "reward_mean": mean("reward"),
        "tool_calls_per_rollout": mean("tools/call_frequency"),
        "completion_tokens_mean": mean("completions/mean_length"),
        "clipped_ratio": mean("completions/clipped_ratio"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="outputs/default-sft-subset", help="a run with data, memory and models/sft")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=["generate", "kv"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/grpo.json")
    args = ap.parse_args()

    import time

    from mrrec_lib.config import load_config
    from mrrec_lib.runs import run_paths
    from mrrec_lib.train.grpo import train_grpo

    source = Path(args.run)
    results: dict[str, dict] = {}
    for setting in args.settings:
        engine, *shape = setting.split(":")
        prompts, gens = (int(x) for x in shape[0].split("x")) if shape else (None, None)
        name = "bench-grpo-" + setting.replace(":", "-")
        overrides = {
            "run_name": name,
            "outputs_dir": str(source.parent),
            "rollout_engine": engine,
            "grpo_max_steps": args.steps,
            "grpo_eval_every": 0,
            "grpo_save_every": 1000,
            "num_threads": args.threads,
        }
        if prompts:
            overrides |= {"grpo_batch_prompts": prompts, "grpo_num_generations": gens}
        cfg = load_config(source / "config.yaml", overrides=overrides)
        paths = run_paths(cfg)
        _linked_run(source, paths.root)
        paths.ensure()
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        train_grpo(cfg, paths)
        block = _measure(cfg, paths.logs / "04_grpo_steps.jsonl", time.perf_counter() - start)
        block["loadavg_1m_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if results:
            first = results[args.settings[0]]
            block["speedup_per_completion_vs_before"] = round(
                first["seconds_per_completion"] / block["seconds_per_completion"], 2
            )
        results[setting] = block
        print(setting, json.dumps(block), flush=True)
        shutil.rmtree(paths.root)

    write_before_after(
        args.out,
        "bench_grpo.py",
        {
            "policy": f"{source}/sft",
            "grpo_max_completion_length": cfg.grpo_max_completion_length,
            "max_tool_calls": cfg.max_tool_calls,
        },
        results,
        args.threads,
    )


if __name__ == "__main__":
    main()
