"""Prompt tokens of the MR.Rec policy prompt in each `policy_prompt` style, on real test requests.

The 135M policy breaks its answer format more often the longer its prompt, SFT conversations are cut at
`sft_max_length`, and every decoded token attends to the whole context, so the prompt's length is the number a
shorter instruction text must move. For the first `--queries` requests stage 05 evaluates in a finished run
(`select_eval_queries`), the initial prompt is built as `run_policy_on_queries` builds it (the run's prompt
kind, the global-memory aspects its store gives the request) and rendered with the policy's chat template and
`tools=`; tokens are counted as the rollout counts its prompt ids. Tokenizer only: no policy forward (the
sentence encoder embeds each request once to pick its aspects, as stage 05 does). Writes
`benchmarks/prompt_tokens.json`: per style the mean/median/max prompt tokens and the tokens of the instruction
text alone (`instruction`, first request), and the compact/full ratio of the means.

    .venv/bin/python benchmarks/bench_prompt.py --run outputs/default --queries 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _count(tok: Any, text: str) -> int:
    """Tokens as the rollout counts its prompt ids."""
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _rendered_tokens(tok: Any, prompt: Any) -> int:
    text = tok.apply_chat_template(prompt.messages, tools=prompt.tools, tokenize=False, add_generation_prompt=True)
    return _count(tok, text)


def _instruction_tokens(tok: Any, prompts: dict[str, Any]) -> dict[str, int]:
    """Tokens of the instruction text, where the styles differ: the user turn after the part they share."""
    users = {style: p.messages[-1]["content"] for style, p in prompts.items()}
    shared = len(os.path.commonprefix(list(users.values())))
    return {style: _count(tok, text[shared:]) for style, text in users.items()}


def _summary(counts: list[int]) -> dict[str, float]:
    return {"mean": round(statistics.mean(counts), 1), "median": statistics.median(counts), "max": max(counts)}


def _policy_prompts(run: Path, n: int) -> tuple[str, list[dict[str, Any]]]:
    """(prompt kind, one {style: Prompt} per request): stage 05's first `n` requests, prompted as it prompts them."""
    from mrrec_lib.agent.prompt import PROMPT_STYLES, build_prompt
    from mrrec_lib.agent.run import default_prompt_kind
    from mrrec_lib.config import load_config
    from mrrec_lib.data.schema import read_table
    from mrrec_lib.eval.context import select_eval_queries
    from mrrec_lib.memory.store import MemoryStore
    from mrrec_lib.runs import RunPaths

    cfg = load_config(run / "config.yaml", overrides={"eval_max_queries": n})
    paths = RunPaths(run)
    store = MemoryStore.load(cfg, paths)
    kind = default_prompt_kind(cfg)
    out = []
    for row in select_eval_queries(read_table(paths.data, "queries"), cfg).to_dict("records"):
        aspects = store.global_context(row["query"], row["category"], cfg.global_top_k) if cfg.global_memory else []
        out.append({s: build_prompt(kind, row["query"], aspects=aspects, style=s) for s in PROMPT_STYLES})
    return kind, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="outputs/default", help="a run folder where stages 01 and 02 have finished")
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/prompt_tokens.json")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from mrrec_lib.llm import ensure_smollm2
    from mrrec_lib.results.provenance import git_state
    from mrrec_lib.runs import resolve, write_json

    run = resolve(args.run)
    if not (run / "config.yaml").is_file():
        sys.exit(f"{run}: no run folder (config.yaml missing); run stages 01-02 there first or pass --run")
    kind, prompts = _policy_prompts(run, args.queries)
    tokenizer_dir = ensure_smollm2()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    styles = {s: _summary([_rendered_tokens(tok, p[s]) for p in prompts]) for s in prompts[0]}
    for s, n in _instruction_tokens(tok, prompts[0]).items():
        styles[s]["instruction"] = n
    git = git_state()
    result = {
        "command": "python benchmarks/bench_prompt.py " + " ".join(sys.argv[1:]),
        "commit": git and git["commit"],
        "dirty": git and git["dirty"],
        "run": str(args.run),
        "requests": len(prompts),
        "prompt_kind": kind,
        "tokenizer": tokenizer_dir.name,
        "prompt_tokens": styles,
        "compact_over_full_mean": round(styles["compact"]["mean"] / styles["full"]["mean"], 3),
    }
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
