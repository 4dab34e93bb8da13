"""Settings shared by the SFT and GRPO trainers: device flags, LoRA, seeds, resuming.

Both stages must agree on these (an SFT adapter trained in bf16 on GPU and a
GRPO run on CPU read the same config), so they are derived in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import get_last_checkpoint

from mrrec_lib.config import Config


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


def resume_checkpoint(output_dir: Path) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir`, so a killed run continues instead of restarting."""
    if not output_dir.is_dir():
        return None
    return get_last_checkpoint(str(output_dir))
