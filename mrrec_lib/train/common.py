"""Settings shared by the SFT and GRPO trainers: device flags, LoRA, seeds, resuming.

Both stages must agree on these (an SFT adapter trained in bf16 on GPU and a
GRPO run on CPU read the same config), so they are derived in one place.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import get_last_checkpoint

from mrrec_lib.config import Config
from mrrec_lib.runs import atomic_write_text
from mrrec_lib.stages import config_digest, first_stage, stage_keys
from mrrec_lib.train.checkpoints import trainer_state


def use_cuda(cfg: Config) -> bool:
    """cfg.device "auto" means CUDA when present; "cuda" without a GPU is an error, not a silent CPU run."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config device: cuda, but torch sees no CUDA device")
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def device_kwargs(cfg: Config) -> dict[str, Any]:
    """TrainingArguments flags for the device: on CPU bf16 and gradient checkpointing are off (TRL enables them by default)."""
    if use_cuda(cfg):
        return {"use_cpu": False, "bf16": cfg.bf16, "activation_checkpointing": cfg.gradient_checkpointing}
    return {"use_cpu": True, "bf16": False, "activation_checkpointing": False}


def grpo_seed(cfg: Config) -> int:
    """The seed of stage 04: `grpo_seed`, else the run's `seed` (what every run before the key existed used)."""
    return cfg.seed if cfg.grpo_seed is None else cfg.grpo_seed


def lora_config(cfg: Config):
    """The PEFT LoRA config, or None for full fine-tuning (cfg.use_lora=False)."""
    if not cfg.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def set_threads(cfg: Config) -> None:
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)


# Raising the step budget continues a run; every other stage key defines a different run.
BUDGET_KEYS = frozenset(
    {"sft_max_steps", "sft_epochs", "sft_save_every", "grpo_max_steps", "grpo_epochs", "grpo_save_every"}
)


def resume_key(cfg: Config, stage: str, start_policy: str = "") -> str:
    """What a checkpoint must have been trained under to be resumed: the stage config minus its own step budget.

    Upstream budgets stay in: GRPO checkpoints of a 24-step SFT policy must not continue on a
    36-step one. `start_policy` (`checkpoints.policy_stamp`) names the weights training starts
    from, which can change without any config key (a retrained stage after a code change).
    """
    own_budget = {k for k in BUDGET_KEYS if first_stage(k) == stage}
    key = config_digest(cfg, [k for k in stage_keys(stage) if k not in own_budget])
    return f"{key}-{start_policy}" if start_policy else key


def resume_checkpoint(output_dir: Path, key: str, state: Sequence[Path] = ()) -> str | None:
    """The newest `checkpoint-N` in `output_dir` when it was written under the same `resume_key`.

    A killed run continues instead of restarting. Checkpoints of another config would continue
    a different run (or fail on mismatched optimizer shapes), so they are removed together with
    the `state` (step/validation logs, best model) that describes them; so is state left without
    checkpoints (a deleted models folder), which a fresh run would otherwise append to.
    """
    from accelerate import PartialState

    stamp = output_dir / "resume_key"
    # Under `accelerate launch` the main process cleans up first and stamps the key; the other ranks
    # then find the stamp current, so no rank deletes files another is reading.
    with PartialState().main_process_first():
        if not stamp.exists() or stamp.read_text().strip() != key:
            for p in (output_dir, *state):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp, key)
        drop_unfinished_checkpoints(output_dir)
    return get_last_checkpoint(str(output_dir))


def drop_unfinished_checkpoints(output_dir: Path) -> list[Path]:
    """Remove `checkpoint-N` folders whose save was cut short (a killed run, a paused stage; `trainer_state`) and
    return them: resuming from the newest folder would load its half-written weights or optimizer state."""
    dropped = []
    for ckpt in sorted(output_dir.glob("checkpoint-*")):
        if trainer_state(ckpt) is None:
            shutil.rmtree(ckpt)
            dropped.append(ckpt)
    return dropped
