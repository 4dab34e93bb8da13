"""GRPO rollouts decoded by the KV engine (`mrrec_lib.agent.engine`) through TRL's `rollout_func` hook.

Why: on CPU a GRPO step is mostly generation, and TRL's tool loop calls `generate` once per turn, re-encoding every
completion's whole prompt (~850 tokens) and tool results each time. Here the completions of a step come from
`run_rollouts`, the code evaluation and validation use: one prompt, tool, budget and parser for training and for the
numbers the policy is judged by. TRL still computes the log-probs, the advantages and the loss; `env_mask` (our
completion mask, 0 on tool-result tokens) becomes TRL's `tool_mask`, so retrieved memory stays out of the loss exactly
as in TRL's own tool loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mrrec_lib.agent.prompt import Prompt, policy_prompt_kind, prompt_tools
from mrrec_lib.agent.rollout import ToolFn, run_rollouts
from mrrec_lib.train.common import grpo_seed


def engine_trainer_class() -> type:
    """GRPOTrainer that keeps the dataset rows of the batch it is generating for.

    TRL hands `rollout_func` the prompts only; the rows say whose memory snapshot each rollout searches and which
    query it answers. Inputs are per completion (TRL's sampler already repeats each prompt G times).
    """
    from trl import GRPOTrainer

    class EngineRolloutGRPOTrainer(GRPOTrainer):
        rollout_rows: list[dict[str, Any]] = []

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            self.rollout_rows = list(inputs)
            return super()._generate_and_score_completions(inputs)

    return EngineRolloutGRPOTrainer


def make_rollout_func(
    cfg: Any,
    tool_for: Callable[[dict[str, Any]], ToolFn | None],
    policy_for: Callable[[Any, Any], Any] | None = None,
) -> Callable[..., dict[str, Any]]:
    """TRL `rollout_func(prompts, trainer)`: sampled multi-turn rollouts of the training model, one per prompt.

    `tool_for(row)` is the memory tool of a dataset row (None: no tools, Rec-R1). The whole completion, model turns
    plus tool results, is bounded by `grpo_max_completion_length`, as TRL's `max_completion_length` bounds it.
    Sampling is seeded from the stage's seed (`grpo_seed`, else `seed`) and the global step, so a resumed run draws what the first attempt drew.
    `policy_for(model, tokenizer)` wraps the training model for decoding (default: `LocalPolicy`, whose KV engine
    `run_rollouts` uses when `rollout_engine` is `kv`).
    """
    from mrrec_lib.agent.policy import LocalPolicy

    wrap = policy_for or (lambda model, tokenizer: LocalPolicy(model=model, tokenizer=tokenizer))

    rollout_cfg = cfg.model_copy(update={"max_new_tokens_total": cfg.grpo_max_completion_length})
    kind, tools = policy_prompt_kind(cfg.policy_uses_memory), prompt_tools(cfg.policy_uses_memory)
    cached: dict[str, Any] = {}

    def rollout(prompts: list[list[dict[str, Any]]], trainer: Any) -> dict[str, Any]:
        rows = trainer.rollout_rows
        if len(rows) != len(prompts):
            raise RuntimeError(
                f"rollout_func got {len(prompts)} prompts but the trainer kept {len(rows)} rows: "
                "build the trainer with engine_trainer_class()"
            )
        policy = cached.get("policy")
        if policy is None or policy.model is not trainer.model:
            policy = cached["policy"] = wrap(trainer.model, trainer.processing_class)
        mode = "train" if trainer.model.training else "eval"
        trainer.model.eval()  # no LoRA dropout while sampling; the weights are the ones being trained
        started = time.perf_counter()
        try:
            trajs = run_rollouts(
                policy,
                [Prompt(kind=kind, messages=list(p), tools=tools) for p in prompts],
                [tool_for(r) for r in rows],
                rollout_cfg,
                qids=[str(r.get("qid", i)) for i, r in enumerate(rows)],
                seed=grpo_seed(cfg) + 100_003 * (trainer.state.global_step + 1),
                progress=False,
            )
        finally:
            trainer.model.train(mode == "train")
        trainer._metrics[mode]["timing/rollout_seconds"].append(time.perf_counter() - started)
        calls = [t.n_tool_calls for t in trajs]
        trainer._metrics[mode]["tools/call_frequency"].append(float(np.mean(calls)))
        trainer._metrics[mode]["tools/invalid_frequency"].append(float(np.mean([t.n_invalid_calls for t in trajs])))
        return {
            "prompt_ids": [t.prompt_ids for t in trajs],
            "completion_ids": [t.completion_ids for t in trajs],
            "logprobs": None,  # TRL computes them with the same weights before the update
            "env_mask": [t.completion_mask for t in trajs],
            "n_tool_calls": calls,
            "answer_text": [_last_assistant_text(t.messages) for t in trajs],
        }

    return rollout


def _last_assistant_text(messages: list[dict[str, Any]]) -> str:
    return next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "assistant"), "")
