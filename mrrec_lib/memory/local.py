"""Local memory: behaviour records, preference patterns per category group, and a user profile, per snapshot.

Resumable by construction: every finished batch of snapshots is appended (with
fsync) to `parts/local_<builder>_<digest>.jsonl` together with the work units
(pattern / profile texts) it produced and what they cost. A rerun reads that
file, skips finished snapshots whose input is unchanged, and reuses any work
unit whose input is identical: the snapshots of one user share every pattern
of a category in which nothing new was bought between them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.llm import ChatLLM, default_sampling
from mrrec_lib.memory.extractive import ExtractiveLocal, record_text
from mrrec_lib.memory.llm_steps import Outcome, run_llm_step, usage_delta, usage_of
from mrrec_lib.memory.prompts import parse_summary, pattern_messages, profile_messages
from mrrec_lib.memory.snapshots import Record, Snapshot
from mrrec_lib.memory.stats import BuildStats, add_costs
from mrrec_lib.memory.text import chunk_text, content_hash, slug
from mrrec_lib.runs import RunPaths, append_jsonl, read_jsonl, write_parquet

LOCAL_COLUMNS = ["snapshot", "user_id", "entry_id", "level", "category", "text"]
LEVELS = ("record", "pattern", "profile")
PROFILE_CATEGORY = "all"
# Config keys that change local memory (the builder is part of the file name).
LOCAL_KEYS = [
    "memory_pattern_group",
    "memory_prompt_max_records",
    "memory_chunk_chars",
    "review_trim_chars",
    "llm_backend",
    "llm_model",
    "llm_temperature",
    "llm_max_new_tokens",
    "seed",
]
PARTS_VERSION = 2  # bump when a builder's output for the same input changes
EXTRACTIVE_BATCH = 64  # snapshots per fsync'd batch when no LLM is involved (cheap work, fewer syncs)


@dataclass
class LocalResult:
    entries: pd.DataFrame
    stats: BuildStats


def group_records(recs: list[Record]) -> dict[str, list[Record]]:
    """Records per category group, groups in name order (ids depend on it, so it must be deterministic)."""
    groups: dict[str, list[Record]] = {}
    for r in recs:
        groups.setdefault(r["group"], []).append(r)
    return dict(sorted(groups.items()))


def _slugs(groups: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for g in groups:
        s, i = slug(g), 2
        while s in used:  # two names with one slug (`Snacks & Sweets` / `Snacks Sweets`) stay distinct
            s, i = f"{slug(g)}_{i}", i + 1
        used.add(s)
        out[g] = s
    return out


def snapshot_entries(records: list[Record], patterns: dict[str, str], profile: str, cfg: Config) -> list[list[str]]:
    """[entry_id, level, category, text] rows; ids are positional, hence stable for identical input."""
    rows = [[f"rec:{i}", "record", r["group"], record_text(r, cfg.review_trim_chars)] for i, r in enumerate(records, 1)]
    for group, s in _slugs(patterns).items():
        for j, chunk in enumerate(chunk_text(patterns[group], cfg.memory_chunk_chars), 1):
            rows.append([f"pref:{s}:{j}", "pattern", group, chunk])
    for j, chunk in enumerate(chunk_text(profile, cfg.memory_chunk_chars), 1):
        rows.append([f"profile:{j}", "profile", PROFILE_CATEGORY, chunk])
    return rows


def parts_file(cfg: Config, parts_dir: Path, kind: str, builder: str, keys: list[str]) -> Path:
    """Finished work of one builder under one config; PARTS_VERSION retires files written by older builder code."""
    return parts_dir / f"{kind}_{builder}_v{PARTS_VERSION}_{cfg.digest(keys)}.jsonl"


class _LocalBuilder:
    """The per-batch work of `build_local_memory`, with the unit memo shared across batches."""

    def __init__(self, cfg: Config, extractive: ExtractiveLocal, builder: str, llm: ChatLLM | None, units: dict):
        self.cfg, self.extractive, self.builder, self.llm, self.units = cfg, extractive, builder, llm, units

    def _run(self, inputs: dict[str, tuple], make_text, messages) -> dict[str, Outcome]:
        if self.builder == "extractive":
            return {k: Outcome(make_text(*args), "extractive") for k, args in inputs.items()}
        prompts = {k: messages(*args) for k, args in inputs.items()}
        return run_llm_step(
            self.llm,
            prompts,
            parse=lambda k, text: parse_summary(text, prompts[k][-1]["content"]),
            fallback=lambda k: make_text(*inputs[k]),
            sampling=default_sampling(self.cfg),
        )

    def batch(self, snaps: list[Snapshot]) -> list[dict]:
        """Build a batch of snapshots; returns the JSONL rows (new units first, then one row per snapshot)."""
        start, before = time.perf_counter(), usage_of(self.llm)
        new: dict[str, Outcome] = {}
        plans = []
        pattern_inputs: dict[str, tuple] = {}
        for s in snaps:
            groups = group_records(s.records)
            keys = {g: content_hash(["pattern", self.builder, g, recs]) for g, recs in groups.items()}
            pattern_inputs.update({k: (g, groups[g]) for g, k in keys.items() if k not in self.units})
            plans.append((s, keys))
        trim = self.cfg.review_trim_chars
        new.update(
            self._run(
                pattern_inputs,
                self.extractive.pattern,
                lambda g, r: pattern_messages(g, r, trim, self.cfg.memory_prompt_max_records),
            )
        )
        self.units.update({k: o.value for k, o in new.items()})

        profile_inputs: dict[str, tuple] = {}
        profile_keys = []
        for s, keys in plans:
            patterns = {g: self.units[k] for g, k in keys.items()}
            pk = content_hash(["profile", self.builder, patterns, s.records]) if s.records else ""
            if pk and pk not in self.units:
                profile_inputs[pk] = (s.records, patterns)
            profile_keys.append((patterns, pk))
        profiles = self._run(
            profile_inputs,
            lambda recs, _p: self.extractive.profile(recs),
            lambda _r, patterns: profile_messages(patterns),
        )
        new.update(profiles)
        self.units.update({k: o.value for k, o in profiles.items()})

        spent = usage_delta(before, usage_of(self.llm))
        spent["seconds"] = time.perf_counter() - start
        share = {f: v / len(snaps) for f, v in spent.items()}
        rows: list[dict] = [{"kind": "unit", "key": k, "text": o.value, "status": o.status} for k, o in new.items()]
        claimed: set[str] = set()
        for (s, keys), (patterns, pk) in zip(plans, profile_keys, strict=True):
            used = [*keys.values(), *([pk] if pk else [])]
            mine = [k for k in used if k in new and k not in claimed]
            claimed.update(mine)
            rows.append(
                {
                    "kind": "snapshot",
                    "snapshot": s.key,
                    "user_id": s.user_id,
                    "input_hash": content_hash(s.records),
                    "entries": snapshot_entries(s.records, patterns, self.units.get(pk, ""), self.cfg),
                    "new_units": mine,
                    "reused": len(used) - len(mine),
                    "cost": share,
                }
            )
        return rows


def build_local_memory(
    cfg: Config,
    snapshots: list[Snapshot],
    extractive: ExtractiveLocal,
    parts_dir: Path,
    builder: str | None = None,
    llm: ChatLLM | None = None,
) -> LocalResult:
    """Local memory for `snapshots`, resuming from (and appending to) the builder's parts file."""
    builder = builder or cfg.memory_builder
    if builder not in ("extractive", "llm"):
        raise ValueError(f"memory_builder must be 'extractive' or 'llm', got {builder!r}")
    if builder == "llm" and llm is None:
        raise ValueError("memory_builder='llm' needs an LLM: pass llm=make_llm(cfg)")
    path = parts_file(cfg, parts_dir, "local", builder, LOCAL_KEYS)
    done: dict[str, dict] = {}
    units: dict[str, str] = {}
    status: dict[str, str] = {}
    for row in read_jsonl(path):
        if row.get("kind") == "unit":
            units[row["key"]], status[row["key"]] = row["text"], row["status"]
        elif row.get("kind") == "snapshot":
            done[row["snapshot"]] = row
    todo = [s for s in snapshots if s.key not in done or done[s.key]["input_hash"] != content_hash(s.records)]
    work = _LocalBuilder(cfg, extractive, builder, llm, units)
    size = max(1, cfg.llm_batch_size if builder == "llm" else EXTRACTIVE_BATCH)
    with tqdm(
        total=len(snapshots), initial=len(snapshots) - len(todo), desc=f"local memory ({builder})", unit="snapshot"
    ) as bar:
        for i in range(0, len(todo), size):
            rows = work.batch(todo[i : i + size])
            append_jsonl(path, rows)
            for row in rows:
                if row["kind"] == "unit":
                    status[row["key"]] = row["status"]
                else:
                    done[row["snapshot"]] = row
            bar.update(len(todo[i : i + size]))
    return _result(cfg, snapshots, done, status, builder)


def _result(
    cfg: Config, snapshots: list[Snapshot], done: dict[str, dict], status: dict[str, str], builder: str
) -> LocalResult:
    table = [[s.key, s.user_id, *e] for s in snapshots for e in done[s.key]["entries"]]
    entries = pd.DataFrame(table, columns=LOCAL_COLUMNS).astype("string")
    stats = BuildStats(
        memory="local",
        builder=builder,
        source_users=len({s.user_id for s in snapshots}),
        units=len(snapshots),
        entries=len(entries),
    )
    add_costs(stats, [done[s.key]["cost"] for s in snapshots])
    for s in snapshots:
        stats.reused += done[s.key]["reused"]
        for k in done[s.key]["new_units"]:
            stats.statuses[status[k]] = stats.statuses.get(status[k], 0) + 1
    return LocalResult(entries, stats)


def write_local_entries(paths: RunPaths, entries: pd.DataFrame) -> Path:
    """The stage output `memory/local_entries.parquet`, written atomically."""
    missing = set(LOCAL_COLUMNS) - set(entries.columns)
    if missing:
        raise KeyError(f"local memory entries lack column(s) {sorted(missing)}")
    return write_parquet(entries[LOCAL_COLUMNS], paths.memory / "local_entries.parquet")


def spread(seq: list, n: int) -> list:
    """`n` evenly spaced elements of `seq` (deterministic), e.g. the snapshots an expensive builder is timed on."""
    if n <= 0 or not seq:
        return []
    if n >= len(seq):
        return list(seq)
    step = len(seq) / n
    return [seq[int(i * step)] for i in range(n)]
