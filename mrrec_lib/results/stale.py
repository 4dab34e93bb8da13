"""Is a committed record still what the current code would produce from its config?

A record vouches for stage hashes computed by the code of its day. When a config key is added
(unless hash-neutral at the recorded behaviour, `stages.HASH_NEUTRAL_DEFAULTS`), removed or moved
to another stage, `stages.stage_hash` gives the recorded config another hash:
the current code would rerun those stages, so their recorded numbers may no longer be what
`mrrec run` produces. `check_record` says so (and which keys changed) instead of letting the
README silently keep citing them; it also catches hand edits and a Table 1 that no longer
recomputes from the per-request rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mrrec_lib import stages
from mrrec_lib.config import ConfigError
from mrrec_lib.results.layout import (
    CONFIG_FILE,
    EVAL_METRICS,
    PER_QUERY_FILE,
    RECORD_FILE,
    STAGES_FILE,
    read_config,
    read_record,
)
from mrrec_lib.results.provenance import key_stages
from mrrec_lib.results.recompute import verify_record
from mrrec_lib.runs import STAGES, read_json

REQUIRED = (CONFIG_FILE, STAGES_FILE, RECORD_FILE, PER_QUERY_FILE, EVAL_METRICS)


def _edited_files(record: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, meta in files.items():
        p = record / name
        if not p.exists():
            out.append(f"{name} is listed in {RECORD_FILE} but missing")
        elif hashlib.sha256(p.read_bytes()).hexdigest() != meta["sha256"]:
            out.append(f"{name} changed since it was recorded (records are written by `mrrec record` only)")
    return out


def _covered(classes: dict[str, str], stage: str) -> set[str]:
    return {k for k, s in classes.items() if s != "ignored" and s <= stage}


def _why(recorded: dict[str, str], stage: str) -> str:
    """Which keys entered or left the stage's hash since recording; else the values themselves differ."""
    before, now = _covered(recorded, stage), _covered(key_stages(), stage)
    parts = [f"{label}: {', '.join(sorted(keys))}" for label, keys in (("now hashed", now - before),
             ("no longer hashed", before - now)) if keys]  # fmt: skip
    return "; ".join(parts) or "same keys, so the recorded config's values differ from what the stage ran with"


def check_record(record_dir: str | Path) -> list[str]:
    """Problems that make the record stale or untrustworthy; [] when the current code agrees with it.

    Checked: the files exist and are as recorded; every recorded stage's hash against `stages.stage_hash` of the
    recorded config under the current code (a key added, removed or moved changes it only for the stages that
    hash it, and the message names such keys); problems the record was written with (`--allow-stale`); and
    Table 1 recomputed from per_query.csv.gz against the recorded metrics/05_eval.json.
    """
    record = Path(record_dir)
    missing = [name for name in REQUIRED if not (record / name).exists()]
    if missing:
        return [f"{record}: missing {', '.join(missing)} (write the record with `mrrec record <run folder>`)"]
    rec = read_record(record)
    problems = _edited_files(record, rec.get("files", {}))
    problems += [f"recorded with a known problem: {p}" for p in rec.get("problems_at_record", [])]
    try:
        cfg = read_config(record)
    except ConfigError as e:
        return [*problems, str(e)]
    recorded_classes = rec.get("key_stages", {})
    for stage, stage_rec in sorted(read_json(record / STAGES_FILE).items()):
        now = stages.stage_hash(cfg, stage)
        if now != stage_rec["hash"]:
            problems.append(
                f"stale: stage {STAGES.get(stage, stage)} ran with config hash {stage_rec['hash']}, the current code "
                f"hashes the recorded config to {now} ({_why(recorded_classes, stage)}); `mrrec run` would rerun it"
            )
    try:
        return problems + [f"Table 1 recomputation: {p}" for p in verify_record(record)]
    except ValueError as e:  # e.g. `rank` is not the recorded headline setting's column
        return [*problems, f"Table 1 recomputation: {e}"]
