"""Stage 04: GRPO on the retrieval reward, multi-turn with the memory tool, tool results masked out of the loss.

Two ways to generate the rollouts, chosen by `rollout_engine`:
- `kv` (default, unless `use_vllm`): TRL's `rollout_func` hook hands each step's prompts to our KV engine through
  `run_rollouts` (`train/engine_rollout.py`), the code evaluation uses; its completion mask (0 on tool-result
  tokens) becomes TRL's `tool_mask`. TRL computes log-probs, advantages and the loss.
- `generate`: TRL's native tool calling with `environment_factory`: TRL owns generation (HF generate on CPU, vLLM
  on GPU via `use_vllm`) and masks every tool-result token (`tool_mask = 0`, loss on `completion_mask * tool_mask`).
  One environment instance per rollout gives each rollout its own user's memory (the row's `snapshot`).
Either way TRL owns distributed training (accelerate / DeepSpeed / FSDP). Rec-R1 (cfg.policy_uses_memory=False)
is the same trainer with no tool and a prompt without global memory.

Run as a script for multi-GPU:
    accelerate launch --config_file configs/accelerate/zero3.yaml -m mrrec_lib.train.grpo \
        --config outputs/<run>/config.yaml
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mrrec_lib.config import Config, load_config
from mrrec_lib.deadline import deadline_from_env
from mrrec_lib.runs import RunPaths, read_jsonl, run_paths, write_json
from mrrec_lib.train.callbacks import SaveBeforeDeadline, StepLogger, ValidationCallback, write_csv_mirror
from mrrec_lib.train.checkpoints import (
    base_reference,
    checkpoints_dir,
    load_policy,
    policy_stamp,
    publish_policy,
    stage_dir,
)
from mrrec_lib.train.common import device_kwargs, grpo_seed, lora_config, resume_checkpoint, resume_key, set_threads
from mrrec_lib.train.environment import make_memory_env


def policy_name(cfg: Config) -> str:
    """Where this variant's policy lives: `grpo` (MR.Rec) or `recr1` (no memory, the Rec-R1 baseline)."""
    return "grpo" if cfg.policy_uses_memory else "recr1"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_layout(cfg: Config, processes: int = 1) -> tuple[int, int]:
    """(per-device completions per micro-step, gradient accumulation) for one optimizer step of
    `grpo_batch_prompts` prompts x `grpo_num_generations` completions; TRL counts completions, not prompts."""
    total = cfg.grpo_batch_prompts * cfg.grpo_num_generations
    if total % processes:
        raise ValueError(
            f"grpo_batch_prompts x grpo_num_generations = {total} completions per step do not split over {processes} processes"
        )
    per_device = min(cfg.grpo_micro_batch, total // processes) or total // processes
    if (total // processes) % per_device:
        raise ValueError(
            f"grpo_micro_batch={per_device} does not divide the {total // processes} completions per process per step"
        )
    return per_device, total // processes // per_device


def build_grpo_config(cfg: Config, paths: RunPaths, processes: int | None = None, dry_run: bool = False):
    """The TRL GRPOConfig for this run: the paper's objective in TRL terms, CPU-safe when there is no GPU.

    `dry_run=True` builds a GPU config (e.g. params/paper.yaml) on a CPU machine to
    check it: the settings are validated, but vLLM and bf16 are switched off so the
    result can construct a trainer here.
    """
    from trl import GRPOConfig

    if cfg.grpo_num_generations < 2:
        raise ValueError("grpo_num_generations must be >= 2: GRPO normalises rewards within each group")
    if dry_run:
        device = {"use_cpu": True, "bf16": False, "activation_checkpointing": False}
    else:
        device = device_kwargs(cfg)
        if cfg.use_vllm and device["use_cpu"]:
            raise ValueError("use_vllm: true needs a CUDA device (vLLM does not generate on CPU); set use_vllm: false")
    per_device, accum = batch_layout(cfg, processes or world_size())
    return GRPOConfig(
        output_dir=str(checkpoints_dir(paths, policy_name(cfg))),
        learning_rate=cfg.grpo_lr,
        lr_scheduler_type="constant",  # VeRL's default, as in the paper
        warmup_steps=0,
        num_generations=cfg.grpo_num_generations,
        temperature=cfg.rollout_temperature,
        top_p=cfg.rollout_top_p,
        max_completion_length=cfg.grpo_max_completion_length,
        epsilon=cfg.grpo_epsilon,
        beta=cfg.grpo_beta,
        loss_type=cfg.grpo_loss_type,
        max_tool_calling_iterations=cfg.max_tool_calls if cfg.policy_uses_memory else None,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        num_train_epochs=cfg.grpo_epochs,
        max_steps=cfg.grpo_max_steps if cfg.grpo_max_steps > 0 else -1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=max(cfg.grpo_save_every, 1),
        save_total_limit=2,
        report_to="none",
        seed=grpo_seed(cfg),
        data_seed=grpo_seed(cfg),
        use_vllm=cfg.use_vllm and not dry_run,
        vllm_mode=cfg.vllm_mode,
        log_completions=cfg.grpo_log_completions,
        dataloader_num_workers=0,
        **device,
    )


def grpo_rows(cfg: Config, queries: pd.DataFrame, global_context: Callable[[str, str], list] | None) -> list[dict]:
    """One dataset row per query: the chat prompt plus the columns the environment and the reward read.

    `global_context(query, category)` supplies the global-memory aspects placed in the
    prompt; None (Rec-R1, or global_memory off) leaves them out.
    """
    from mrrec_lib.agent.prompt import build_messages
    from mrrec_lib.memory import snapshot_key

    rows = []
    for q in queries.itertuples(index=False):
        aspects = global_context(q.query, q.category) if global_context is not None else []
        rows.append(
            {
                "prompt": build_messages(q.query, aspects, cfg.policy_uses_memory, cfg.policy_prompt),
                "qid": q.qid,
                "user_id": q.user_id,
                "snapshot": snapshot_key(q.user_id, q.target_timestamp),
                "target_item_id": q.target_item_id,
                "category": q.category,
                "query": q.query,
            }
        )
    return rows


def build_grpo_trainer(
    cfg: Config,
    args: Any,
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    reward_funcs: Callable | Sequence[Callable],
    env_class: type | None = None,
    callbacks: Sequence[Any] = (),
    rollout_func: Callable | None = None,
):
    """A GRPOTrainer over `rows`: `rollout_func` (from `engine_rollout.make_rollout_func`) generates with the KV
    engine and its own memory tool; otherwise TRL generates and `env_class` (from `make_memory_env`) is the tool."""
    from datasets import Dataset
    from trl import GRPOTrainer

    if cfg.policy_uses_memory and env_class is None and rollout_func is None:
        raise ValueError("policy_uses_memory=True needs the memory environment (env_class) or a rollout_func")
    tokenizer.padding_side = "left"
    trainer_class: type = GRPOTrainer
    if rollout_func is not None:
        from mrrec_lib.train.engine_rollout import engine_trainer_class

        trainer_class = engine_trainer_class()
    return trainer_class(
        model=model,
        reward_funcs=list(reward_funcs) if isinstance(reward_funcs, Sequence) else reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        environment_factory=env_class if cfg.policy_uses_memory and rollout_func is None else None,
        rollout_func=rollout_func,
        callbacks=list(callbacks),
    )


def _global_context_fn(cfg: Config, store: Any) -> Callable[[str, str], list] | None:
    if not (cfg.policy_uses_memory and cfg.global_memory):
        return None
    return lambda query, category: store.global_context(query, category, cfg.global_top_k)


def train_grpo(cfg: Config, paths: RunPaths, evaluate: Callable[[Any], dict] | None = None) -> dict[str, Any]:
    """Run stage 04 end to end (resumable): train, validate with early stopping, publish the best policy.

    `evaluate(model) -> {"ndcg@100": ..., ...}` defaults to the validation-split
    evaluator of `mrrec_lib.train.validation`. Returns a summary for the notebook.
    """
    from transformers import set_seed

    from mrrec_lib.data.schema import read_table
    from mrrec_lib.memory.store import MemoryStore
    from mrrec_lib.retrieval.items import ItemRetriever
    from mrrec_lib.train.rewards import make_trl_reward_funcs
    from mrrec_lib.train.validation import make_policy_evaluator

    set_threads(cfg)
    set_seed(grpo_seed(cfg))
    which = policy_name(cfg)
    start = cfg.grpo_start
    if start == "sft" and not cfg.sft_enabled:
        warnings.warn("grpo_start: sft but sft_enabled: false -> GRPO starts from the base policy", stacklevel=2)
        start = "base"
    queries = read_table(paths.data, "queries")
    train_q = queries[queries["split"] == "train"]
    if train_q.empty:
        raise ValueError(f"{paths.data / 'queries.parquet'}: no train-split queries for GRPO")
    store = MemoryStore.load(cfg, paths) if cfg.policy_uses_memory else None
    retriever = ItemRetriever.from_run(cfg, paths)
    model, tokenizer = load_policy(cfg, paths, start, for_training=True)  # type: ignore[arg-type]
    rows = grpo_rows(cfg, train_q, _global_context_fn(cfg, store))
    env_class, rollout_func = None, None
    if cfg.rollout_engine == "kv" and not cfg.use_vllm:  # vLLM (GPU) generates inside TRL
        from mrrec_lib.agent.run import store_tool
        from mrrec_lib.train.engine_rollout import make_rollout_func

        rollout_func = make_rollout_func(
            cfg, lambda row: store_tool(store, row["snapshot"], cfg.memory_top_k) if store is not None else None
        )
    elif cfg.policy_uses_memory:
        env_class = make_memory_env(store, cfg.memory_top_k)

    args = build_grpo_config(cfg, paths)
    steps_log = paths.logs / f"04_{which}_steps.jsonl"
    val_log = paths.logs / f"04_{which}_val.jsonl"
    best_dir = stage_dir(paths, which) / "best"
    trainer_box: dict[str, Any] = {}

    def save_best(step: int) -> None:
        trainer_box["trainer"].save_model(str(best_dir))
        write_json(best_dir / "step.json", {"step": step})

    resume = resume_checkpoint(
        Path(args.output_dir),
        resume_key(cfg, "04", policy_stamp(paths, start)),
        [steps_log, steps_log.with_suffix(".csv"), val_log, best_dir],
    )
    stopper = SaveBeforeDeadline(deadline_from_env())
    callbacks: list[Any] = [stopper, StepLogger(steps_log)]
    validator = None
    if cfg.grpo_eval_every > 0 and cfg.grpo_eval_queries > 0:
        if evaluate is None:
            val_q = queries[queries["split"] == "val"].head(cfg.grpo_eval_queries)
            evaluate = make_policy_evaluator(cfg, tokenizer, store, retriever, val_q)
        validator = ValidationCallback(evaluate, save_best, val_log, cfg.grpo_eval_every, cfg.grpo_patience)
        callbacks.append(validator)
    trainer = build_grpo_trainer(
        cfg, args, model, tokenizer, rows, make_trl_reward_funcs(retriever, cfg), env_class, callbacks, rollout_func
    )
    trainer_box["trainer"] = trainer

    started = time.perf_counter()
    already_stopped = validator is not None and validator.bad_evals >= validator.patience
    if not already_stopped:
        trainer.train(resume_from_checkpoint=resume)
        stopper.raise_if_stopped()
    seconds = time.perf_counter() - started
    if validator is None or validator.best_step < 0:
        trainer.save_model(str(best_dir))
        best_step = trainer.state.global_step
    else:
        best_step = validator.best_step
    info = {"stage": "04", "variant": which, "best_step": best_step, "last_step": trainer.state.global_step}
    final = publish_policy(
        best_dir,
        stage_dir(paths, which) / "final",
        base=base_reference(cfg, start),
        adapter=cfg.use_lora,
        info=info,
    )
    if steps_log.exists():
        write_csv_mirror(steps_log)
    return {
        **info,
        "start": start,
        "train_queries": len(rows),
        "train_seconds": seconds,
        "final_dir": str(final),
        "steps": read_jsonl(steps_log),
        "validation": read_jsonl(val_log),
    }


def before_after(cfg: Config, paths: RunPaths, summary: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Validation metrics of the start policy vs the published (best) one, and their paired per-query differences.

    Read from the validation log when it has both steps; otherwise both policies are evaluated afresh. Empty
    with `grpo_eval_queries: 0` (a run that validates nowhere, e.g. the smoke run's Rec-R1 companion).
    """
    from mrrec_lib.train.validation import compare_policies, paired_change, scalar_table

    if cfg.grpo_eval_queries <= 0:
        return pd.DataFrame(), []

    val = {row["step"]: row for row in summary["validation"]}
    if 0 in val and summary["best_step"] in val:
        evals = {
            f"{summary['start']} (step 0)": val[0],
            f"{summary['variant']} (step {summary['best_step']})": val[summary["best_step"]],
        }
        table = scalar_table(evals).drop(columns=["step", "seconds", "improved"], errors="ignore")
    else:
        table, evals = compare_policies(cfg, paths, [summary["start"], summary["variant"]], cfg.grpo_eval_queries)
    before, after = list(evals.values())
    return table, [paired_change(before, after, m, cfg) for m in ("ndcg@100", "recall@100", "reward")]


def rl_metrics(
    summary: dict[str, Any], settings: dict[str, Any], table: pd.DataFrame, paired: list[dict[str, Any]]
) -> dict[str, Any]:
    """What notebook 04 records: the run summary, per-step aggregates, validation history, before/after."""
    import numpy as np

    from mrrec_lib.train.plots import SIGNAL_PANELS

    steps = [s for s in summary["steps"] if s.get("reward") is not None]
    return {
        "enabled": True,
        **{k: v for k, v in summary.items() if k not in ("steps", "validation")},
        "settings": settings,
        "steps_run": len(steps),
        "step_seconds_mean": float(np.nanmean([s["step_seconds"] for s in steps])) if steps else None,
        "reward_first": steps[0]["reward"] if steps else None,
        "reward_last": steps[-1]["reward"] if steps else None,
        "tool_calls_per_rollout_last": steps[-1].get("tools/call_frequency") if steps else None,
        "signal_mean": {key: _mean_logged(steps, key) for key, _, _ in SIGNAL_PANELS},
        "validation": [
            {k: v for k, v in r.items() if k not in ("per_query", "example")} for r in summary["validation"]
        ],
        "before_after": table.reset_index(names="policy").to_dict("records"),
        "paired": paired,
    }


def _mean_logged(steps: list[dict[str, Any]], key: str) -> float | None:
    """Mean over the steps that logged `key` (None when none did)."""
    values = [s[key] for s in steps if s.get(key) is not None]
    return float(sum(values) / len(values)) if values else None


def main(argv: list[str] | None = None) -> None:
    """CLI for `accelerate launch -m mrrec_lib.train.grpo --config outputs/<run>/config.yaml`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the run's merged config.yaml (or any params file)")
    parser.add_argument("--run-name", default="", help="override the config's run_name")
    a = parser.parse_args(argv)
    cfg = load_config(a.config, overrides={"run_name": a.run_name} if a.run_name else None)
    summary = train_grpo(cfg, run_paths(cfg))
    print({k: v for k, v in summary.items() if k not in ("steps", "validation")})


if __name__ == "__main__":
    main()
