"""Where trained policies live and how later stages load them.

Layout under `models/`: `<stage>/checkpoints/checkpoint-N` (trainer state, for
resuming) and `<stage>/final/` (the policy other stages use). A final folder holds
either a LoRA adapter or full weights plus `mrrec_policy.json`, which names the
model the adapter sits on: the base policy model, or another stage's final policy
(GRPO started from SFT stores `{"which": "sft"}`). Adapters keep the run folder
small (a few MB instead of a model copy per stage); `load_policy` merges them on load.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

from mrrec_lib.config import Config
from mrrec_lib.runs import MissingStageError, RunPaths, atomic_write_text, file_digests, file_stamps

Which = Literal["base", "sft", "grpo", "recr1"]
POLICY_META = "mrrec_policy.json"
STAGE_OF = {"sft": "03", "grpo": "04", "recr1": "04"}


def stage_dir(paths: RunPaths, which: str) -> Path:
    if which not in STAGE_OF:
        raise ValueError(f"unknown policy {which!r}; expected one of base, {', '.join(STAGE_OF)}")
    return paths.models / which


def final_dir(paths: RunPaths, which: str) -> Path:
    return stage_dir(paths, which) / "final"


def checkpoints_dir(paths: RunPaths, which: str) -> Path:
    return stage_dir(paths, which) / "checkpoints"


def trainer_state(ckpt: Path) -> dict[str, Any] | None:
    """A `checkpoint-N` folder's `trainer_state.json`, or None when the save was cut short.

    The Trainer writes a checkpoint's files in place and its `trainer_state.json` last, so a folder without a
    readable one may hold half-written weights or optimizer state: not a checkpoint to resume from or count.
    """
    try:
        return json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None


def base_reference(cfg: Config, start: str) -> dict[str, str]:
    """What a new adapter sits on: another stage's final policy, or the configured base model."""
    return {"which": start} if start in STAGE_OF else {"model": cfg.policy_model}


def write_policy_meta(out_dir: Path, *, base: dict[str, str], adapter: bool, info: dict[str, Any]) -> None:
    meta = {"base": base, "adapter": adapter, **info}
    atomic_write_text(out_dir / POLICY_META, json.dumps(meta, indent=2, default=str))


def read_policy_meta(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / POLICY_META).read_text())


def publish_policy(src: Path, dst: Path, *, base: dict[str, str], adapter: bool, info: dict[str, Any]) -> Path:
    """Copy a saved model folder to `dst` with its metadata, replacing `dst` only once the copy is complete."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*.pth"))
    write_policy_meta(tmp, base=base, adapter=adapter, info=info)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


def policy_stamp(paths: RunPaths, which: str) -> str:
    """A short hash of a trained policy's final folder (file names, sizes, mtimes; "" for the base model)."""
    if which not in STAGE_OF:
        return ""
    d = final_dir(paths, which)
    stamps = file_stamps(list(d.rglob("*")), d)
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:12]


# Files of a final folder that record how it was made (paths, timings), not what the policy computes.
_VOLATILE = ("trainer_state.json", "training_args.bin", POLICY_META)


def policy_files(d: Path) -> list[Path]:
    """The files of a final policy folder that determine what it computes (weights, configs, tokenizer)."""
    return [p for p in d.rglob("*") if p.is_file() and p.name not in _VOLATILE] if d.is_dir() else []


def policy_digest(d: Path) -> list[str]:
    """Content identity of a final policy folder: its weights, configs and tokenizer by hash, plus the model its
    adapter sits on (another stage's final policy by its own digest: GRPO's adapter means nothing without the
    SFT weights under it); timings and trainer bookkeeping are left out, so a bit-identical retraining in a later
    session has the same identity (`eval.evaluate.system_fingerprint`)."""
    if not d.is_dir():
        return ["no-checkpoint"]
    files = policy_files(d)
    meta = read_policy_meta(d) if (d / POLICY_META).exists() else {}
    out = [*file_digests(files, d.parent), json.dumps({k: meta.get(k) for k in ("base", "adapter")}, sort_keys=True)]
    under = (meta.get("base") or {}).get("which")
    if under in STAGE_OF:
        out += [f"{under}/{line}" for line in policy_digest(d.parent.parent / under / "final")]
    return out


def load_policy(cfg: Config, paths: RunPaths, which: Which = "sft", for_training: bool = False):
    """(model, tokenizer) of a policy: "base" (cfg.policy_model), or a trained stage's final policy, adapters merged.

    Raises MissingStageError naming the stage to run when the policy has not been trained in this run folder.
    """
    from mrrec_lib.llm import load_causal_lm

    if which == "base":
        return load_causal_lm(cfg.policy_model, cfg, for_training=for_training)
    d = final_dir(paths, which)
    if not (d / POLICY_META).exists():
        stage = STAGE_OF[which]
        raise MissingStageError(
            f"{d} holds no trained policy: stage {stage} has not finished for run folder {paths.root}. "
            f"Run it first, e.g. `mrrec run {paths.config_file} --only {stage}`."
        )
    meta = read_policy_meta(d)
    if not meta["adapter"]:
        return load_causal_lm(str(d), cfg, for_training=for_training)
    base = meta["base"]
    if "which" in base:
        model, tokenizer = load_policy(cfg, paths, base["which"], for_training=for_training)
    else:
        model, tokenizer = load_causal_lm(base["model"], cfg, for_training=for_training)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(d)).merge_and_unload()
    return model, tokenizer
