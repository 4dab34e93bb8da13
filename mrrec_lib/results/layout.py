"""What a committed record `results/<run>/` holds, and how its files are read back.

A record is the compact, version-controlled trace of one run folder: outputs/ is git-ignored and
may be gone in the next session, so every number the README cites must be recomputable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from mrrec_lib.config import FIELDS, Config, ConfigError
from mrrec_lib.runs import read_json

CONFIG_FILE = "config.yaml"  # the run's merged config, byte for byte
STAGES_FILE = "stages.json"  # the run's stage records (config hash, seconds, finished_at)
RECORD_FILE = "record.json"  # provenance: commit, machine, stage hashes, key classification, file digests
PER_QUERY_FILE = "per_query.csv.gz"  # stage 05's per-request rows without texts
METRICS_DIR = "metrics"  # copies of the run's metrics/*.json and small *.md / *.csv tables
EVAL_METRICS = f"{METRICS_DIR}/05_eval.json"
EVALUATED_FROM = "evaluated_from.json"  # copied when the run was made by `mrrec evaluate`

ID_COLUMNS = ("system", "qid", "user_id", "category", "target_item_id")
# Short strings kept beside the numbers: why an answer was malformed ("" when it parsed), so the reasons behind a
# malformed rate are counted from the record, not from run logs that may be gone.
REASON_COLUMNS = ("parse_error",)


def record_dir(results_dir: str | Path, run: str) -> Path:
    return Path(results_dir) / run


def read_config(record: Path) -> Config:
    """The recorded config under the current code.

    Keys the code no longer has are dropped so old records stay readable; if such a key was hashed,
    `check_record` reports the stages it made stale.
    """
    data: dict[str, Any] = yaml.safe_load((record / CONFIG_FILE).read_text()) or {}
    try:
        return Config(**{k: v for k, v in data.items() if k in FIELDS})
    except ValidationError as e:
        raise ConfigError(f"{record / CONFIG_FILE} is no longer a valid config under the current code: {e}") from e


def read_stage_hashes(record: Path) -> dict[str, str]:
    """Stage -> config hash of a record's stages.json."""
    path = record / STAGES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {record} is not a record (see `mrrec record`)")
    return {stage: entry["hash"] for stage, entry in read_json(path).items()}


def read_borrowed_stage_hashes(record: Path) -> tuple[str | None, dict[str, str]]:
    """The run a record's trained policies were borrowed from by `mrrec evaluate`, and its stage -> hash.

    Why: an evaluated record lists only the stages it ran itself, so without these its policy's stages 03/04
    would look absent rather than equal (or not) to another record's. (None, {}) for a record that trained its own.
    """
    path = record / EVALUATED_FROM
    if not path.is_file():
        return None, {}
    data = read_json(path)
    return data.get("trained_run"), {stage: e["hash"] for stage, e in (data.get("trained_stages") or {}).items()}


def read_record(record: Path) -> dict[str, Any]:
    return read_json(record / RECORD_FILE)


def read_eval_metrics(record: Path) -> dict[str, Any]:
    return read_json(record / EVAL_METRICS)


def read_per_query(record: Path) -> pd.DataFrame:
    """The per-request rows exactly as written: ids and reasons stay strings ("NA", "0012", ""), ranks keep inf."""
    path = record / PER_QUERY_FILE
    header = pd.read_csv(path, nrows=0).columns
    strings = [c for c in header if c in ID_COLUMNS or c in REASON_COLUMNS]
    return pd.read_csv(
        path,
        dtype=dict.fromkeys(strings, str),
        keep_default_na=False,
        na_values={c: [""] for c in header if c not in strings},
    )
