"""`mrrec record`: copy the compact, recomputable trace of a finished run into results/<run>/.

outputs/ is git-ignored and may not survive to the next session, so what the README cites is
kept under version control instead: the merged config, the stage records with their hashes, the
metrics files and small tables, and stage 05's per-request rows without texts (per_query.csv.gz),
from which `recompute_table` rebuilds Table 1. A record is only written by this code: it is built
in a scratch folder, its recomputed Table 1 is checked against the run's metrics/05_eval.json,
and only then does it replace the previous record as a whole (no file of an older record lingers).

per_query.csv.gz rather than parquet: it was the smaller of the two on every size tried (610 rows:
20 KB vs 50 KB; 20,000 rows: 0.64 MB vs 1.09 MB snappy / 0.75 MB zstd), stays readable by any
tool in decades, and is written with a zero gzip timestamp so an unchanged record is byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from mrrec_lib.config import load_config
from mrrec_lib.eval.evaluate import RANK_COLUMNS, metric_names
from mrrec_lib.results.layout import (
    CONFIG_FILE,
    EVALUATED_FROM,
    ID_COLUMNS,
    METRICS_DIR,
    PER_QUERY_FILE,
    REASON_COLUMNS,
    RECORD_FILE,
    STAGES_FILE,
    record_dir,
)
from mrrec_lib.results.provenance import git_state, hash_problems, key_stages, machine, now_iso, stage_entries
from mrrec_lib.results.recompute import verify_record
from mrrec_lib.runs import (
    STAGES,
    MissingStageError,
    RunPaths,
    atomic_write_bytes,
    project_root,
    read_json,
    resolve,
    write_json,
)

PER_QUERY_SOURCE = "05_per_query.parquet"  # written by eval.report.write_report in stage 05
# Per-request numbers kept beside ids, ranks and R/N@k: what Table 1's cost columns and subsets are made of.
PER_QUERY_EXTRA = (
    "malformed", "memory_tokens", "memory_tokens_global", "tool_calls", "latency_s", "n_history", "title_overlap",
    *REASON_COLUMNS,
)  # fmt: skip
REQUIRED_COLUMNS = ("system", "qid", "user_id", "rank")  # without these Table 1 cannot be recomputed
MAX_TABLE_BYTES = 1_000_000  # metrics/*.md|*.csv above this are left out (listed in record.json)


class StaleRecordError(ValueError):
    """The run cannot be vouched for: its stage hashes or its recomputed Table 1 disagree with what it recorded."""


def per_query_columns(ks: list[int]) -> list[str]:
    return [*ID_COLUMNS, *RANK_COLUMNS, *metric_names(ks), *PER_QUERY_EXTRA]


def export_per_query(parquet: Path, ks: list[int]) -> tuple[bytes, dict[str, Any]]:
    """Stage 05's per-request rows, numbers only and in stage 05's row order, as deterministic csv.gz bytes.

    The row order matters: the bootstrap sums each user's requests in that order, so keeping it keeps the
    recomputed intervals bit-identical. Columns an older stage 05 did not write are listed, not invented.
    """
    wanted = per_query_columns(ks)
    names = set(pq.read_schema(parquet).names)
    absent = [c for c in REQUIRED_COLUMNS if c not in names]
    if absent:
        raise ValueError(f"{parquet} lacks column(s) {absent}: Table 1 cannot be recomputed from it")
    present = [c for c in wanted if c in names]
    df = pd.read_parquet(parquet, columns=present)
    data = gzip.compress(df.to_csv(index=False, lineterminator="\n").encode(), compresslevel=9, mtime=0)
    info = {
        "file": PER_QUERY_FILE,
        "source": f"{METRICS_DIR}/{PER_QUERY_SOURCE}",
        "rows": len(df),
        "columns": present,
        "missing_columns": [c for c in wanted if c not in names],
    }
    return data, info


def require_run(run: RunPaths) -> dict[str, dict]:
    """The run's stage records, or an error naming the missing file and what makes it."""
    if not run.root.is_dir():
        raise MissingStageError(f"run folder {run.root} does not exist: make it with `mrrec run <params>`")
    if not run.config_file.exists():
        raise MissingStageError(f"{run.config_file} is missing: `mrrec run` writes it when a run starts")
    stages_file = run.root / STAGES_FILE
    if not stages_file.exists():
        raise MissingStageError(
            f"{stages_file} is missing: `mrrec run` writes it after each finished stage (plain papermill does not); "
            f"run stage 05 with `mrrec run {run.config_file} --only 05`"
        )
    run.require(run.metrics_file("05_eval"), "05")
    run.require(run.metrics / PER_QUERY_SOURCE, "05")
    records = read_json(stages_file)
    if "05" not in records:
        raise MissingStageError(
            f"{stages_file} has no finished record of stage {STAGES['05']} (interrupted, or run outside "
            f"`mrrec run`): run `mrrec run {run.config_file} --only 05`"
        )
    return records


def _copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())


def copy_metrics(run: RunPaths, dest: Path) -> list[str]:
    """Every metrics/*.json, and the *.md / *.csv tables up to MAX_TABLE_BYTES; returns the tables left out."""
    skipped = []
    for f in sorted(run.metrics.iterdir()):
        if f.suffix == ".json" or (f.suffix in (".md", ".csv") and f.stat().st_size <= MAX_TABLE_BYTES):
            _copy(f, dest / METRICS_DIR / f.name)
        elif f.suffix in (".md", ".csv"):
            skipped.append(f"{f.name} ({f.stat().st_size} bytes)")
    return skipped


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file: `check_record` tells a hand edit from what `mrrec record` wrote."""
    return {
        p.relative_to(folder).as_posix(): {
            "bytes": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RECORD_FILE
    }


def display_path(path: Path) -> str:
    """`path` relative to the project root when inside it: what a reader types in a fresh checkout."""
    try:
        return path.resolve().relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def _replace_dir(new: Path, dest: Path) -> None:
    """Put `new` at `dest`, removing the previous record only once the new one is in place."""
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _prior_provenance(dest: Path, stages_file: Path) -> dict[str, Any]:
    """The earlier record's provenance when it recorded this same run (byte-identical stages.json), else {}.

    Why: re-recording a run (say, after the record gained a column) must not claim that the run was made at
    today's commit on today's load, nor forget the command that made it.
    """
    old = dest / RECORD_FILE
    if not old.exists() or not (dest / STAGES_FILE).exists():
        return {}
    if (dest / STAGES_FILE).read_bytes() != stages_file.read_bytes():
        return {}
    return {k: v for k, v in read_json(old).items() if k in ("recorded_at", "run_command", "git", "machine")}


def record_run(
    run_dir: str | Path, results_dir: str | Path = "results", *, command: str | None = None, allow_stale: bool = False
) -> Path:
    """Write results/<run>/ for the run folder `run_dir`; return it.

    Refuses (StaleRecordError) when a stage's recorded hash differs from what the current code gives the run's
    config.yaml, or when Table 1 recomputed from the per-request rows differs from metrics/05_eval.json, unless
    `allow_stale`: the record is then written with those problems in record.json, where `check_record` and the
    README rendering show them. `command` is the `mrrec run` invocation, when the record is made by it.
    Re-recording the same run keeps the first record's provenance and adds `re_recorded` (when, at which commit).
    """
    run = RunPaths(resolve(run_dir))
    records = require_run(run)
    cfg = load_config(run.config_file)
    dest = record_dir(resolve(results_dir), run.root.name)
    entries = stage_entries(cfg, records)
    git = git_state()
    prior = _prior_provenance(dest, run.root / STAGES_FILE)
    scratch = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        _copy(run.config_file, scratch / CONFIG_FILE)
        _copy(run.root / STAGES_FILE, scratch / STAGES_FILE)
        if (run.root / EVALUATED_FROM).exists():
            _copy(run.root / EVALUATED_FROM, scratch / EVALUATED_FROM)
        skipped = copy_metrics(run, scratch)
        data, per_query = export_per_query(run.metrics / PER_QUERY_SOURCE, cfg.eval_ks)
        atomic_write_bytes(scratch / PER_QUERY_FILE, data)
        problems = hash_problems(entries) + [f"Table 1 recomputation: {p}" for p in verify_record(scratch)]
        if problems and not allow_stale:
            raise StaleRecordError(
                f"not recording {run.root}:\n  " + "\n  ".join(problems) + "\nrerun the run (`mrrec run "
                f"{run.config_file} --record`), or record it as stale with --allow-stale"
            )
        record = {
            "run": run.root.name,
            "run_folder": display_path(run.root),
            "recorded_at": prior.get("recorded_at", now_iso()),
            "run_command": command or prior.get("run_command"),
            "reproduce": f"mrrec run {display_path(dest / CONFIG_FILE)} --record",
            "git": prior.get("git", git),
            "machine": prior.get("machine", machine(cfg)),
            "stages": entries,
            "key_stages": key_stages(),
            "per_query": per_query,
            "skipped_tables": skipped,
            "problems_at_record": problems,
            "files": file_digests(scratch),
        }
        if prior:
            record["re_recorded"] = {"at": now_iso(), "commit": git["commit"], "dirty": git["dirty"]}
        write_json(scratch / RECORD_FILE, record)
        _replace_dir(scratch, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest
