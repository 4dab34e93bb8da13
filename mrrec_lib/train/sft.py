"""Stage 03 training: TRL SFTTrainer on the warm-up conversations, loss on the assistant's own tokens only.

`assistant_only_loss=True` makes TRL swap in the training variant of the Qwen2.5
template (`{% generation %}` markers around assistant turns), so the system
prompt, the request and every tool result (rendered as a `<tool_response>` user
turn) get label -100: the model learns to call the tool and answer, never to
reproduce memory. The `tools` column renders the tool schema into the system
prompt exactly as GRPO does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mrrec_lib.config import Config
from mrrec_lib.deadline import deadline_from_env
from mrrec_lib.runs import RunPaths, read_jsonl
from mrrec_lib.train.callbacks import SaveBeforeDeadline, StepLogger, write_csv_mirror
from mrrec_lib.train.checkpoints import (
    base_reference,
    checkpoints_dir,
    final_dir,
    publish_policy,
    stage_dir,
    trainer_state,
)
from mrrec_lib.train.common import device_kwargs, lora_config, resume_checkpoint, resume_key, set_threads


def build_sft_config(cfg: Config, paths: RunPaths):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(checkpoints_dir(paths, "sft")),
        learning_rate=cfg.sft_lr,
        num_train_epochs=cfg.sft_epochs,
        max_steps=cfg.sft_max_steps,
        per_device_train_batch_size=cfg.sft_batch_size,
        gradient_accumulation_steps=cfg.sft_grad_accum,
        max_length=cfg.sft_max_length,
        assistant_only_loss=True,
        packing=False,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=1,
        save_strategy="steps",
        save_steps=max(cfg.sft_save_every, 1),
        save_total_limit=2,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        **device_kwargs(cfg),
    )


def conversation_length(tokenizer: Any, record: dict[str, Any]) -> int:
    import json

    tools = record.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return len(tokenizer.apply_chat_template(record["messages"], tools=tools, tokenize=True, return_dict=False))


def fit_length(tokenizer: Any, records: list[dict[str, Any]], max_length: int) -> tuple[list[dict], list[int]]:
    """Records that fit `max_length` tokens (a truncated one would lose its final answer), and all lengths."""
    lengths = [conversation_length(tokenizer, r) for r in records]
    return [r for r, n in zip(records, lengths, strict=True) if n <= max_length], lengths


def length_stats(lengths: list[int], max_length: int) -> dict[str, Any]:
    """Conversation lengths in tokens: `tokens_mean` over every candidate (what the length figure shows), and
    `trained_tokens_mean` over those under `max_length` only, the work a training step does (throughput counts
    these: the dropped ones are the longest, so the first overstates it)."""
    trained = [n for n in lengths if n <= max_length]
    return {
        "examples": len(trained),
        "dropped_too_long": len(lengths) - len(trained),
        "tokens_mean": float(sum(lengths) / len(lengths)) if lengths else 0.0,
        "trained_tokens_mean": float(sum(trained) / len(trained)) if trained else 0.0,
        "tokens_max": max(lengths, default=0),
    }


def build_sft_trainer(cfg: Config, args: Any, model: Any, tokenizer: Any, records: list[dict], callbacks=()):
    from datasets import Dataset
    from trl import SFTTrainer

    if not records:
        raise ValueError(
            "no SFT records to train on: every candidate was filtered out by the reward filter or was longer than "
            f"sft_max_length={cfg.sft_max_length} tokens (see the data report and the length figure)"
        )
    columns = [{"messages": r["messages"], "tools": r["tools"]} for r in records]
    tokenizer.padding_side = "right"
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(columns),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=list(callbacks),
    )


def train_sft(
    cfg: Config, paths: RunPaths, records: list[dict[str, Any]], model: Any = None, tokenizer: Any = None
) -> dict[str, Any]:
    """Fine-tune the base policy on `records` (resuming from the last checkpoint) and publish models/sft/final."""
    from transformers import set_seed

    set_threads(cfg)
    set_seed(cfg.seed)
    if model is None:
        from mrrec_lib.llm import load_causal_lm

        model, tokenizer = load_causal_lm(cfg.policy_model, cfg, for_training=True)
    fitting, lengths = fit_length(tokenizer, records, cfg.sft_max_length)
    args = build_sft_config(cfg, paths)
    log_path = paths.logs / "03_sft_train.jsonl"
    resume = resume_checkpoint(Path(args.output_dir), resume_key(cfg, "03"), [log_path, log_path.with_suffix(".csv")])
    stopper = SaveBeforeDeadline(deadline_from_env())
    trainer = build_sft_trainer(cfg, args, model, tokenizer, fitting, [stopper, StepLogger(log_path)])
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    stopper.raise_if_stopped()
    seconds = time.perf_counter() - start
    last = stage_dir(paths, "sft") / "last"
    trainer.save_model(str(last))
    tokenizer.save_pretrained(str(last))
    info = {"stage": "03", "variant": "sft", "last_step": trainer.state.global_step}
    publish_policy(last, final_dir(paths, "sft"), base=base_reference(cfg, "base"), adapter=cfg.use_lora, info=info)
    if log_path.exists():
        write_csv_mirror(log_path)
    return {
        **info,
        # train_seconds covers only the steps after first_step: a resumed training's speed needs both
        "first_step": int(trainer_state(Path(resume))["global_step"]) if resume else 0,
        **length_stats(lengths, cfg.sft_max_length),
        "train_loss": float(result.training_loss),
        "train_seconds": seconds,
        "log": read_jsonl(log_path),
    }
