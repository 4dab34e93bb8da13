"""Where each speed target of the speed issue stands, from what was measured (no number is typed in here).

Reads the engine and GRPO benchmarks (`rollout.json`, `grpo.json`), the committed records (SFT training
throughput from `metrics/03_sft.json`, which LLM rows were scored on the whole test split), the default config
and `mrrec estimate`'s record-based price of `make demo`, and the README's fresh-clone test-suite line. Writes
`benchmarks/targets.json` and prints the markdown table docs/results.md shows.

    .venv/bin/python benchmarks/targets.py
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mrrec_lib.config import load_config
from mrrec_lib.estimate import estimate
from mrrec_lib.results.layout import PER_QUERY_FILE, read_config, read_per_query, read_record
from mrrec_lib.runs import read_json, write_json
from mrrec_lib.study_cost import COMPANION_STAGES

ROOT = Path(__file__).resolve().parents[1]


def _row(target: str, goal: str, measured: str, met: bool, source: str) -> dict:
    return {"target": target, "goal": goal, "measured": measured, "met": met, "source": source}


def eval_speed(bench: dict) -> dict:
    before = next(iter(bench["before"].values()))["requests_per_min"]
    name, after = max(bench["after"].items(), key=lambda kv: kv[1]["requests_per_min"])
    ratio = after["requests_per_min"] / before
    return _row("MR.Rec evaluation requests/min", ">= 10x before", f"{ratio:.2f}x ({before} -> {after['requests_per_min']}, "
                f"`{name}`, identical profiles {after.get('identical_profiles_vs_before', '?')})", ratio >= 10, "benchmarks/rollout.json")


def grpo_step(bench: dict) -> dict:
    name, after = min(bench["after"].items(), key=lambda kv: kv[1]["step_seconds_mean"])
    s = after["step_seconds_mean"]
    return _row("GRPO seconds per step, default shape", "<= 60 s", f"{s} s (`{name}`, {after['prompts_x_generations']})",
                s <= 60, "benchmarks/grpo.json")


def sft_throughput(results: Path) -> dict:
    """SFT training tokens/s over the records, fastest over slowest: the speed-up per unit of work reached so far.

    Seconds per step would also credit runs that train on shorter conversations (Rec-R1, ablations), not faster code.
    A stage 03 reused by another run (donor seeding) is one training: counted once, by its measured train_seconds.
    Tokens are the conversations trained on: a record from before `trained_tokens_mean` that dropped some for length
    has only the mean over all candidates, which counts the longest ones never trained on, so it is left out.
    train_seconds covers only the steps after a resume (`first_step`); a record from before `first_step` whose run
    was advanced by `--partial` budgets may have resumed, so it is left out too.
    """
    rates, seen, unknown, resumed = {}, set(), 0, 0
    for f in sorted(results.glob("*/metrics/03_sft.json")):
        train, cfg = read_json(f).get("train") or {}, read_config(f.parents[1])
        if train.get("train_seconds") in seen or not (train.get("train_seconds") and train.get("last_step")):
            continue
        seen.add(train.get("train_seconds"))
        length = train.get("trained_tokens_mean", train["tokens_mean"] if train.get("dropped_too_long") == 0 else None)
        if length is None:
            unknown += 1
            continue
        first = train.get("first_step")
        if first is None and "--partial" in str(read_record(f.parents[1]).get("run_command", "")):
            resumed += 1
            continue
        tokens = (train["last_step"] - (first or 0)) * cfg.sft_batch_size * cfg.sft_grad_accum * length
        rates[f"{f.parents[1].name} ({cfg.policy_prompt} prompt)"] = tokens / train["train_seconds"]
    if len(rates) < 2:
        return _row("SFT training tokens/s", ">= 3x", f"{len(rates)} record(s) with a known trained length", False,
                    "results/*/metrics/03_sft.json")
    lo, hi = min(rates, key=rates.get), max(rates, key=rates.get)
    ratio = rates[hi] / rates[lo]
    left_out = f"; {unknown} trainings that dropped long conversations left out: no trained length recorded" if unknown else ""
    if resumed:
        left_out += f"; {resumed} trainings of --partial runs left out: no resume step recorded"
    return _row("SFT training tokens/s", ">= 3x", f"{rates[lo]:.0f}-{rates[hi]:.0f} over {len(rates)} trainings ({ratio:.2f}x; "
                f"fastest {hi}, slowest {lo}{left_out})", ratio >= 3, "results/*/metrics/03_sft.json")


def grpo_shape(cfg) -> dict:
    prompts, steps = cfg.grpo_batch_prompts, cfg.grpo_max_steps
    return _row("default GRPO shape", ">= 8 prompts x 4 completions, >= 100 steps",
                f"{prompts} x {cfg.grpo_num_generations}, {steps} steps",
                prompts >= 8 and cfg.grpo_num_generations >= 4 and steps >= 100, "params/default.yaml + mrrec_lib/config.py")


def demo_time(params: Path, results: Path) -> dict:
    cfg = load_config(params)
    rows = estimate([params], results_dir=results)["rows"]
    seconds = sum(r["seconds"] for r in rows)
    if cfg.eval_recr1_params:
        companion = estimate([params, ROOT / cfg.eval_recr1_params], results_dir=results)["rows"]
        seconds += sum(r["seconds"] for r in companion if r["stage"][:2] in COMPANION_STAGES[2:])
    return _row("`make demo` on 2 idle cores", "<= 60 min", f"{seconds / 3600:.1f} h (estimated from the records)",
                seconds <= 3600, "`mrrec estimate params/default.yaml` (+ the Rec-R1 companion's stages 03-04)")


def full_split_rows(cfg, results: Path) -> dict:
    """The default's LLM systems that some record scored on every test request."""
    llm = [s for s in cfg.eval_systems if not s.startswith(("query_", "template_"))]
    full: set[str] = set()
    for rec in sorted(p.parent for p in results.glob(f"*/{PER_QUERY_FILE}")):
        data = read_json(rec / "metrics" / "01_data.json") if (rec / "metrics" / "01_data.json").exists() else {}
        n_test = (data.get("queries_per_split") or {}).get("test")
        if n_test:
            counts = read_per_query(rec)["system"].value_counts()
            full |= {s for s in llm if counts.get(s, 0) >= n_test}
    missing = [s for s in llm if s not in full]
    return _row("LLM rows of Table 1 on the full test split", f"all {len(llm)}", f"{len(full)} of {len(llm)}"
                + (f" (missing: {', '.join(missing)})" if missing else ""), not missing, "results/*/per_query.csv.gz")


def test_suite(readme: str) -> dict:
    m = re.search(r"took (\d+) min (\d+) s of pytest.*?(\d+) min (\d+) s with the install on a fresh clone", readme, re.S)
    if not m:
        return _row("`make test` after install", "<= 10 min", "no fresh-clone measurement in the README", False, "README.md")
    pytest_s = int(m[1]) * 60 + int(m[2])
    return _row("`make test` after install", "<= 10 min", f"{int(m[1])} min {int(m[2])} s of pytest "
                f"({m[3]} min {m[4]} s with the install)", pytest_s <= 600, "README.md (fresh-clone measurement)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "default.yaml"))
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "targets.json"))
    args = ap.parse_args()
    params, results = Path(args.params), Path(args.results)
    cfg = load_config(params)
    rows = [
        eval_speed(read_json(ROOT / "benchmarks" / "rollout.json")),
        grpo_step(read_json(ROOT / "benchmarks" / "grpo.json")),
        sft_throughput(results),
        grpo_shape(cfg),
        demo_time(params, results),
        full_split_rows(cfg, results),
        test_suite((ROOT / "README.md").read_text()),
    ]
    write_json(Path(args.out), {"command": "python benchmarks/targets.py", "targets": rows})
    print("| target | goal | measured | met | source |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['goal']} | {r['measured']} | {'yes' if r['met'] else 'no'} | {r['source']} |")
    print(json.dumps({"met": sum(r["met"] for r in rows), "of": len(rows)}))


if __name__ == "__main__":
    main()
