"""Which config keys each stage depends on, and the content hash that caches a stage.

A key belongs to the first stage whose output it can change; stage N's hash
covers every key of stages <= N. Keys not listed default to stage 01, so a new
knob nobody classified reruns everything rather than silently reusing stale
outputs. Keys that never change results (names, paths, thread counts) are
ignored, and keys added after results were committed are left out at the value
those results ran with (`HASH_NEUTRAL_DEFAULTS`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mrrec_lib.config import FIELDS, Config
from mrrec_lib.runs import STAGES, RunPaths, read_json, write_json

IGNORED_KEYS = frozenset(
    {
        "run_name",
        "outputs_dir",
        "cache_dir",
        "num_threads",
        "device",
        "llm_request_timeout",
        "rollout_engine",  # the same greedy answers either way (tests/test_engine.py); sampled ones differ only in draws
        "rollout_chunk_size",
    }
)

# Keys added after records in results/ were committed, each with the value that reproduces what those records ran
# (the code's behaviour before the key existed). At that value a key is left out of the stage hash, so adding it
# neither makes every committed record stale nor reruns finished stages; any other value is hashed as usual.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {"policy_prompt": "full", "grpo_seed": None}

# Stages 06 and 07 read things outside the run's own config (the ablation summary,
# a user's typed request), so they are never skipped.
UNCACHED_STAGES = frozenset({"06", "07"})

# Checked in order, first match wins: the stage-02 memory-building keys must come before the
# generic `memory_` prefix, which covers runtime retrieval knobs read from stage 03 on.
_PREFIX_STAGE: tuple[tuple[str, str], ...] = (
    ("encoder_", "01"),  # notebook 01 measures request builders against real Amazon-C4 requests with the encoder
    ("ivf_", "02"),
    ("hnsw_", "02"),
    ("index_", "02"),
    ("item_retriever", "02"),
    ("memory_builder", "02"),
    ("memory_chunk_chars", "02"),
    ("memory_pattern_group", "02"),
    ("memory_prompt_max_records", "02"),
    ("memory_llm_probe_snapshots", "02"),
    ("global_num_negatives", "02"),
    ("global_queries_per_category", "02"),
    ("global_max_descriptions", "02"),
    ("global_merge_max_lines", "02"),
    ("price_per_m_", "02"),
    ("memory_", "03"),
    ("local_memory", "03"),
    ("global_memory", "03"),
    ("global_top_k", "03"),
    ("policy_", "03"),
    ("max_tool_calls", "03"),
    ("max_new_tokens", "03"),
    ("rollout_", "03"),
    ("reward_", "03"),
    ("malformed_retrieval", "03"),
    ("decode_", "03"),
    ("sft_", "03"),
    ("use_lora", "03"),
    ("lora_", "03"),
    ("grpo_", "04"),
    ("gradient_checkpointing", "04"),
    ("use_vllm", "04"),
    ("vllm_mode", "04"),
    ("bf16", "04"),
    ("accelerate_config", "04"),
    ("eval_", "05"),
    ("naive_memory_n", "05"),
    ("bootstrap_samples", "05"),
    ("case_study_n", "05"),
    ("ablation_", "06"),
    ("assistant_", "07"),
)


def first_stage(key: str) -> str:
    for prefix, stage in _PREFIX_STAGE:
        if key.startswith(prefix):
            return stage
    return "01"


def stage_keys(stage: str) -> list[str]:
    """Every config key that can change the outputs of `stage` (its own and upstream)."""
    return sorted(k for k in FIELDS if k not in IGNORED_KEYS and first_stage(k) <= stage)


def hashed_keys(cfg: Config, keys: Iterable[str]) -> list[str]:
    """`keys` minus those at their hash-neutral default: what any fingerprint of `cfg` should cover."""
    return [k for k in keys if k not in HASH_NEUTRAL_DEFAULTS or getattr(cfg, k) != HASH_NEUTRAL_DEFAULTS[k]]


def config_digest(cfg: Config, keys: Iterable[str]) -> str:
    """`cfg.digest` over the `hashed_keys` of `keys`.

    Stage hashes, resume keys and record checks all go through here, so they agree on what a config hashes to.
    """
    return cfg.digest(hashed_keys(cfg, keys))


def stage_hash(cfg: Config, stage: str) -> str:
    return config_digest(cfg, stage_keys(stage))


def _record_file(paths: RunPaths) -> Path:
    return paths.root / "stages.json"


def _read_or_empty(f: Path) -> dict[str, dict]:
    return read_json(f) if f.exists() else {}


def read_records(paths: RunPaths) -> dict[str, dict]:
    return _read_or_empty(_record_file(paths))


def record_stage(paths: RunPaths, stage: str, cfg: Config, seconds: float) -> None:
    """Mark `stage` finished for this config; only called after its notebook ran without error.

    Time spent in earlier attempts that paused at a deadline (`record_pause`) is added to `seconds`, so the stage's
    recorded cost is its whole wall time, as the study's cost model assumes; `paused_seconds` says how much of it.
    """
    pending = read_paused(paths)
    paused = pending.pop(stage, None)
    spent = paused["seconds"] if paused and paused["hash"] == stage_hash(cfg, stage) else 0.0
    records = read_records(paths)
    records[stage] = {"hash": stage_hash(cfg, stage), "seconds": round(seconds + spent, 1), "finished_at": time.time()}
    if spent:
        records[stage]["paused_seconds"] = round(spent, 1)
    write_json(_record_file(paths), records)
    if paused:
        write_json(_paused_file(paths), pending)


def _paused_file(paths: RunPaths) -> Path:
    return paths.root / "paused.json"


def read_paused(paths: RunPaths) -> dict[str, dict]:
    """Stages stopped at a deadline before they finished: {stage: {"hash", "seconds" spent so far}}."""
    return _read_or_empty(_paused_file(paths))


def record_pause(paths: RunPaths, stage: str, cfg: Config, seconds: float) -> float:
    """Add `seconds` to the time `stage` has spent unfinished under this config (another config's time is dropped:
    its partial outputs are not resumed); return the total."""
    paused = read_paused(paths)
    h = stage_hash(cfg, stage)
    before = paused.get(stage, {}).get("seconds", 0.0) if paused.get(stage, {}).get("hash") == h else 0.0
    paused[stage] = {"hash": h, "seconds": round(before + seconds, 1), "paused_at": time.time()}
    write_json(_paused_file(paths), paused)
    return paused[stage]["seconds"]


def forget_from(paths: RunPaths, stage: str) -> None:
    """Invalidate `stage` and everything downstream before rerunning it."""
    records = {s: r for s, r in read_records(paths).items() if s < stage}
    write_json(_record_file(paths), records)


def is_current(paths: RunPaths, stage: str, cfg: Config) -> bool:
    if stage in UNCACHED_STAGES:
        return False
    rec = read_records(paths).get(stage)
    return bool(rec) and rec["hash"] == stage_hash(cfg, stage) and (paths.notebooks / f"{STAGES[stage]}.ipynb").exists()
