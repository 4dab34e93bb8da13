"""What stages cost on this machine, read from the committed run records (results/<run>/).

`benchmarks/throughput.json` prices work from micro-benchmarks, some of them taken on the smoke data of an
earlier benchmark; the records hold what whole stages took here on the real data. So `mrrec estimate` (and the
study planner, which calls it) prefers them: a stage whose config hash a record shares costs what it cost there
(the same work on the same data), and otherwise per-unit speeds measured across the records price it — seconds
per request of each evaluated system (the policies' decoding dominates stage 05), per SFT step and per GRPO
completion. Speeds are medians over distinct measurements, so a run shared by several records counts once.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from mrrec_lib.config import ConfigError
from mrrec_lib.results.layout import EVAL_METRICS, PER_QUERY_FILE, STAGES_FILE, read_config, read_per_query
from mrrec_lib.runs import read_json

DATA_METRICS = "metrics/01_data.json"


@dataclass(frozen=True)
class RecordedSizes:
    """Stage-01 counts of a recorded run (after loading, filtering and splitting)."""

    items: int
    queries: int
    train_queries: int
    test_queries: int
    users: int
    interactions: int
    categories: int
    run: str


@dataclass(frozen=True)
class RecordedCosts:
    """Measured seconds by stage hash, and per-unit speeds of one policy model on this machine's records."""

    stage_seconds: dict[str, tuple[float, str]] = field(default_factory=dict)  # "<stage>:<hash>" -> (s, run)
    seconds_per_request: dict[str, float] = field(default_factory=dict)  # evaluated system -> s per request
    sft_seconds_per_step: float | None = None
    grpo_seconds_per_completion: float | None = None
    sizes: dict[str, RecordedSizes] = field(default_factory=dict)  # stage-01 hash -> counts
    models: frozenset[str] = frozenset()  # policy models the speeds were measured with
    runs: int = 0

    def measured(self, stage: str, stage_hash: str) -> tuple[float, str] | None:
        return self.stage_seconds.get(f"{stage}:{stage_hash}")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _sizes(record: Path, data: dict) -> RecordedSizes | None:
    counts, split = data.get("counts") or {}, data.get("queries_per_split") or {}
    if not counts or "candidate items" not in counts:
        return None
    return RecordedSizes(
        items=int(counts["candidate items"]), queries=int(counts["queries"]), train_queries=int(split.get("train", 0)),
        test_queries=int(split.get("test", 0)), users=int(counts["users"]), interactions=int(counts["interactions"]),
        categories=int(counts["categories"]), run=record.name,
    )


def _validations(steps: int, every: int) -> int:
    """Validation passes of a GRPO run: one before training and one every `every` steps."""
    return 1 + steps // every if every > 0 else 0


@lru_cache(maxsize=8)
def _read(results: Path, signature: tuple) -> RecordedCosts:
    del signature  # part of the cache key only: a new or rewritten record invalidates the cache
    stage_seconds: dict[str, tuple[float, str]] = {}
    latency: dict[tuple[str, str], float] = {}  # (stage-05 hash, system) -> mean s per request
    sft: dict[str, float] = {}
    grpo_runs: dict[str, tuple[float, int, int, int]] = {}  # stage-04 hash -> (s, completions, validations, q)
    sizes: dict[str, RecordedSizes] = {}
    models: set[str] = set()
    records = sorted(p.parent for p in results.glob(f"*/{STAGES_FILE}"))
    for rec in records:
        try:
            cfg = read_config(rec)
        except (ConfigError, FileNotFoundError):
            continue  # a stale or partial record prices nothing
        models.add(cfg.policy_model)
        done = read_json(rec / STAGES_FILE)
        for stage, r in done.items():
            if r.get("seconds") is not None and r.get("hash"):
                stage_seconds.setdefault(f"{stage}:{r['hash']}", (float(r["seconds"]), rec.name))
        if "01" in done and (rec / DATA_METRICS).exists():
            found = _sizes(rec, read_json(rec / DATA_METRICS))
            if found is not None:
                sizes.setdefault(done["01"]["hash"], found)
        if "03" in done and cfg.sft_max_steps > 0:
            sft[done["03"]["hash"]] = float(done["03"]["seconds"]) / cfg.sft_max_steps
        if "04" in done and cfg.grpo_max_steps > 0:
            completions = cfg.grpo_max_steps * cfg.grpo_batch_prompts * cfg.grpo_num_generations
            grpo_runs[done["04"]["hash"]] = (float(done["04"]["seconds"]), completions,
                                             _validations(cfg.grpo_max_steps, cfg.grpo_eval_every), cfg.grpo_eval_queries)
        if "05" in done and (rec / PER_QUERY_FILE).exists() and (rec / EVAL_METRICS).exists():
            pq = read_per_query(rec)
            for system, mean in pq.groupby("system")["latency_s"].mean().items():
                latency.setdefault((done["05"]["hash"], str(system)), float(mean))
    per_system: dict[str, list[float]] = {}
    for (_, system), mean in latency.items():
        per_system.setdefault(system, []).append(mean)
    per_request = {s: statistics.median(v) for s, v in per_system.items()}
    validate = per_request.get("mrrec", per_request.get("mrrec_sft", 0.0))
    # Validation decodes with the policy at evaluation speed; what is left is the rollouts and the updates.
    rest = [(s - n_val * q * validate, n) for s, n, n_val, q in grpo_runs.values()]
    per_completion = [r / n for r, n in rest if r > 0]
    return RecordedCosts(stage_seconds, per_request, _median(list(sft.values())), _median(per_completion), sizes,
                         frozenset(models), len(records))


def recorded_costs(results: Path) -> RecordedCosts:
    """The costs measured by the records under `results` (empty when there are none)."""
    results = Path(results).resolve()
    if not results.is_dir():
        return RecordedCosts()
    signature = tuple((p.parent.name, p.stat().st_mtime_ns) for p in sorted(results.glob(f"*/{STAGES_FILE}")))
    return _read(results, signature)
