"""`mrrec ablate`: the paper's ablation study, accumulated across sessions under a wall-time budget.

The whole batch needs far more 2-core CPU than a ~3 h session (results/study.json prices what is left, from
the recorded stage times) and outputs/ may not survive between sessions, so what lasts is each finished
run's committed record (results/<run>/, `mrrec record`). Every invocation therefore
1. skips each ablation whose record is current: its stage-01 and stage-05 config hashes equal what the params
   give now and `check_record` finds nothing stale;
2. queues the rest in a fixed priority order (`PRIORITY`: the paper's headline comparisons first, the most
   expensive last), so whatever a session manages is the most useful part;
3. starts a queued run only if its estimated cost (`study_cost`) fits what is left of the budget, stopping at
   the first that does not (later runs count on the earlier ones' shared stages), and records each run as soon
   as it finishes, so a killed session keeps what finished; a failure goes to results/<run>/failed.json and the
   study goes on, and a later invocation retries it only when its hashes changed (or with `retry_failed`);
   with `partial`, the first run that does not fit is started anyway and paused at the end of the budget
   (`runner.StagePaused`): its stages resume from their checkpoints next time, so a run longer than any
   session (the LLM memory builder's ~9 h stage 02) still advances, provided outputs/ survives; its stage-05
   rows are also kept in results/partial/<run>/ (`results.partial`) and restored before the run resumes, so an
   evaluation longer than a session advances even when outputs/ is lost (earlier stages are rebuilt, and the
   saved rows count wherever the rebuild is bit-identical);
4. prints what is recorded and what is left, and writes the same to results/study.json.
Donor seeding (`ablate.seed_from_donor`) still shares identical upstream stages, and with every record
current an invocation does no work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from mrrec_lib import ablate, runner, stages
from mrrec_lib.config import Config, load_config
from mrrec_lib.results import check_record, record_run
from mrrec_lib.results.layout import STAGES_FILE
from mrrec_lib.results.partial import (
    changed_inputs,
    drop_partial,
    partial_dir,
    restore_partial,
    save_partial,
    saved_on,
    saved_rows,
)
from mrrec_lib.results.provenance import cpu_model, now_iso
from mrrec_lib.results.record import display_path
from mrrec_lib.runs import STAGES, RunPaths, ablation_summary_file, read_json, resolve, write_json
from mrrec_lib.study_cost import (
    STAGE_ORDER,
    CostModel,
    Paused,
    StageSeconds,
    estimated_seconds,
    finished_stages,
    job_for,
    paused_stages,
    plan,
)

# Delta file stems in the order they are run: the components of the paper's Fig. 3 and Table 1's Rec-R1 row, the
# GRPO-seed replicas (GRPO and evaluation only, ~1 h each: the run-to-run noise every later Δ is read against), the
# local-memory levels (Table 2), top-k (Fig. 6), the retriever (Fig. 5), the data-seed replicas, the policy start,
# and the LLM memory builder (hours of generation) last. Unknown deltas follow, by name.
PRIORITY = (
    "no_global_memory",
    "no_local_memory",
    "recr1",
    "grpo_seed_1",
    "grpo_seed_2",
    "local_records_only",
    "local_patterns_only",
    "local_profile_only",
    "topk_1",
    "topk_2",
    "topk_4",
    "topk_5",
    "retriever_bm25",
    "seed_1",
    "seed_2",
    "grpo_from_base",
    "memory_builder_llm",
)
KEY_STAGES = ("01", "05")  # data identity and (hashes being cumulative) everything a run's numbers depend on
FAILED_FILE = "failed.json"
STUDY_FILE = "study.json"
RECORDED, RAN, FAILED, LEFT, PAUSED = "recorded", "ran now", "failed", "left", "paused"
MIN_PARTIAL_MIN = 10.0  # a partial run shorter than this would mostly load models and lose its last checkpoint interval


@dataclass
class Ablation:
    """One run of the study, and what is known about it."""

    name: str  # "base" or the delta file's stem
    files: tuple[Path, ...]  # base params, then the delta, then the scale overlay
    cfg: Config
    delta: Path | None = None
    scale: Path | None = None
    status: str = LEFT
    note: str = ""
    stages_left: tuple[str, ...] = ()
    minutes_left: float = 0.0
    shared: dict = field(default_factory=dict)  # donor seeding of a run made now: shared_from, shared_stages

    @property
    def run(self) -> str:
        return self.cfg.run_name

    def hashes(self) -> dict[str, str]:
        return {s: stages.stage_hash(self.cfg, s) for s in KEY_STAGES}


def priority(delta: Path) -> tuple[int, str]:
    return (PRIORITY.index(delta.stem) if delta.stem in PRIORITY else len(PRIORITY), delta.stem)


def collect(base: Path, deltas: list[Path], scale: Path | None = None) -> list[Ablation]:
    """The base run, then each delta (once) in priority order, with its merged config (scale overlay last)."""
    out = []
    for d in [None, *sorted(dict.fromkeys(deltas), key=priority)]:
        files = tuple(ablate.run_files(base, d, scale))
        out.append(Ablation(d.stem if d else "base", files, ablate.run_config(base, d, scale), d, scale))
    return out


def study_file(scale: Path | None) -> str:
    """Each scale keeps its own plan: study.json for the full recipe, study-<scale>.json for an overlay."""
    return STUDY_FILE if scale is None else f"study-{ablate.scale_name(scale)}.json"


def record_state(ab: Ablation, results: Path, retry_failed: bool) -> tuple[str, str]:
    """RECORDED when results/<run>/ is current for these params, FAILED when it failed with them before, else LEFT."""
    folder, want = results / ab.run, ab.hashes()
    note = ""
    if (folder / STAGES_FILE).exists():
        recorded = read_json(folder / STAGES_FILE)
        if {s: recorded.get(s, {}).get("hash") for s in KEY_STAGES} != want:
            note = "recorded with other params (stage hashes differ): rerun"
        elif problems := check_record(folder):
            note = f"record stale ({problems[0]}): rerun"
        else:
            return RECORDED, ""
    if (folder / FAILED_FILE).exists():
        failed = read_json(folder / FAILED_FILE)
        if failed.get("hashes") == want and not retry_failed:
            return FAILED, f"failed in stage {failed['stage']}: {failed['error']} (--retry-failed reruns it)"
        note = note or "failed before: retried"
    return LEFT, note


def paused_note(ab: Ablation, paused: dict[str, dict[str, Paused]]) -> str:
    """What an earlier `partial` invocation left in outputs/<run> (`paused_stages`): the stage it paused in under
    this ablation's config, the time spent and the checkpoint or per-request rows it resumes from."""
    mine = [(s, p) for s, p in sorted(paused.get(ab.run, {}).items()) if p.hash == stages.stage_hash(ab.cfg, s)]
    return "; ".join(
        f"stage {s} paused after {p.seconds / 60:.0f} min"
        + (f" at step {p.steps[0]} of {p.steps[1]}" if p.steps else "")
        + (f" with {sum(p.rows.values())} per-request rows logged" if p.rows else "")
        + ", resumes"
        for s, p in mine
    )


def estimate_left(todo: list[Ablation], model: CostModel) -> None:
    """Set each ablation's stages and minutes still to run, in order, from what outputs/ holds now."""
    model.refresh()
    jobs = [job_for(ab.files, ab.cfg) for ab in todo]
    costs = plan(jobs, finished_stages(model.outputs), model, paused_stages(model.outputs))
    for ab, cost in zip(todo, costs, strict=True):
        ab.stages_left, ab.minutes_left = cost.stages, cost.seconds / 60


def failed_stage(ab: Ablation, outputs: Path) -> str:
    """The first stage without a current record in the run folder: where the run stopped."""
    records = stages.read_records(RunPaths(outputs / ab.run))
    return next((s for s in STAGE_ORDER if records.get(s, {}).get("hash") != stages.stage_hash(ab.cfg, s)), "05")


def write_failed(ab: Ablation, results: Path, stage: str, error: str, tb: str) -> None:
    write_json(
        results / ab.run / FAILED_FILE,
        {
            "ablation": ab.name,
            "run": ab.run,
            "stage": stage,
            "stage_name": STAGES.get(stage, stage),
            "error": error,
            "traceback": tb,
            "failed_at": now_iso(),
            "hashes": ab.hashes(),
            "params": [display_path(f) for f in ab.files],
        },
    )
    ab.status, ab.note = FAILED, f"failed in stage {stage}: {error}"


def execute(ab: Ablation, outputs: Path, results: Path, command: str | None, deadline: float | None = None) -> None:
    """Run one ablation (donor-seeded) until `deadline` (a `time.time()` value) and record it at once if it
    finished; a failure is written down, never raised."""
    # Not 06 (it summarises the study itself) nor 07 (interactive).
    only = ",".join(s for s in runner.available_stages() if s in STAGE_ORDER)
    if restored := restore_partial(results, outputs / ab.run):
        print(f"[study] {ab.run}: restored stage-05 rows from {display_path(partial_dir(results, ab.run))}: "
              + ", ".join(f"{stem} {n}" for stem, n in restored.items()))
    r = ablate.run_one(ab.files[0], ab.delta, only, outputs, ab.scale, deadline=deadline)
    if r["status"] != "ok":
        if changed := changed_inputs(outputs / ab.run, results):
            print(f"[study] {ab.run}: rebuilt inputs differ from the session that saved its stage-05 rows (CPU "
                  f"{saved_on(results, ab.run)!r} then, {cpu_model()!r} now), so the rows of the systems reading them "
                  f"were evaluated again: {', '.join(changed)}")
        if saved := save_partial(outputs / ab.run, results):
            print(f"[study] {ab.run}: stage-05 rows kept in {display_path(partial_dir(results, ab.run))}: "
                  + ", ".join(f"{stem} {n}" for stem, n in saved.items()))
    if r["status"] == "paused":
        ab.status, ab.note = PAUSED, f"{r['error']} (outputs/{ab.run})"
        return
    if r["status"] != "ok":
        write_failed(ab, results, failed_stage(ab, outputs), r["error"], r["traceback"])
        return
    ab.shared = {"shared_from": r["shared_from"], "shared_stages": r["shared_stages"]}
    try:
        record_run(outputs / ab.run, results, command=command)
    except Exception as e:  # e.g. a stale or unrecomputable record: the study goes on
        write_failed(ab, results, "record", f"{type(e).__name__}: {e}", "")
        return
    drop_partial(results, ab.run)
    ab.status, ab.stages_left, ab.minutes_left = RAN, (), 0.0
    ab.note = f"reused {','.join(r['shared_stages'])} from {r['shared_from']}" if r["shared_stages"] else ""


def format_table(abls: list[Ablation]) -> str:
    width = max([26, *(len(ab.run) + 2 for ab in abls)])
    lines = [f"{'ablation':<22}{'run':<{width}}{'status':<10}{'min left':>9}  stages left / note"]
    for ab in abls:
        detail = " ".join(x for x in (",".join(ab.stages_left), ab.note) if x)
        lines.append(f"{ab.name:<22}{ab.run:<{width}}{ab.status:<10}{ab.minutes_left:>9.0f}  {detail}")
    lines.append(f"{'total left':<{32 + width}}{sum(ab.minutes_left for ab in abls):>9.0f}")
    return "\n".join(lines)


def study_json(
    abls: list[Ablation], base: Path, budget_min: float | None, dry_run: bool, scale: Path | None = None
) -> dict:
    rows = [
        {
            "ablation": ab.name,
            "run": ab.run,
            "params": [display_path(f) for f in ab.files],
            "status": ab.status,
            "minutes_left": round(ab.minutes_left, 1),
            "stages_left": list(ab.stages_left),
            "hashes": ab.hashes(),
            "note": ab.note,
        }
        for ab in abls
    ]
    total = round(sum(ab.minutes_left for ab in abls), 1)
    return {
        "written_at": now_iso(),
        "base": display_path(base),
        "scale": display_path(scale) if scale is not None else None,
        "budget_min": budget_min,
        "dry_run": dry_run,
        "minutes_left": total,
        "ablations": rows,
    }


def summarise(abls: list[Ablation], results: Path, summary: Path) -> None:
    """The ablation summary notebook 06 reads, from the records (outputs/ may be gone); unrun ablations left out."""
    rows = []
    for ab in abls:
        if ab.status in (RECORDED, RAN):
            rows.append({"ablation": ab.name, "run": ab.run, "status": "ok", **ab.shared})
        elif ab.status == FAILED:
            rows.append({"ablation": ab.name, "run": None, "status": "failed", "error": ab.note})
    ablate.summarise(rows, results, summary)


def run_queue(
    queue: list[Ablation],
    outputs: Path,
    results: Path,
    model: CostModel,
    deadline: float,
    command: str | None,
    partial: bool = False,
) -> None:
    """Run the queue in order while the next run's estimate fits before `deadline` (a `time.monotonic()` value);
    with `partial`, start the first that does not fit, and pause whichever run is still going at the deadline
    (without it a started run finishes even if it overruns its estimate, as before)."""
    for i, ab in enumerate(queue):
        estimate_left(queue[i:], model)  # re-planned each time: an earlier run may have failed
        left_min = (deadline - time.monotonic()) / 60
        need = f"{ab.name} needs ~{ab.minutes_left:.0f} min"
        fits = ab.minutes_left <= left_min
        if not fits and not (partial and left_min >= MIN_PARTIAL_MIN):
            print(
                f"[study] {'nothing started' if i == 0 else 'stopping'}: {need}, {left_min:.0f} min of the budget left"
            )
            return
        stop_at = time.time() + (deadline - time.monotonic()) if partial and not math.isinf(deadline) else None
        how = "" if fits else f"; started for the {left_min:.0f} min left, paused at the budget and resumed next time"
        print(f"[study] {ab.name} -> {ab.run}: {need} ({','.join(ab.stages_left) or 'record only'}{how})")
        execute(ab, outputs, results, command, deadline=stop_at)
        print(f"[study] {ab.name}: {ab.status}" + (f" ({ab.note})" if ab.note else ""))
        if ab.status == PAUSED:
            return


def run_study(
    base: str | Path,
    deltas: list[str | Path],
    budget_min: float | None = None,
    results_dir: str | Path = "results",
    dry_run: bool = False,
    retry_failed: bool = False,
    command: str | None = None,
    stage_seconds: StageSeconds | None = None,
    scale: str | Path | None = None,
    partial: bool = False,
) -> list[Ablation]:
    """Run what is missing of the study within `budget_min` minutes (None: no limit); return every ablation's state.

    `stage_seconds(params files) -> {stage: seconds}` prices a run (default: `mrrec estimate`'s figures).
    `scale` is a params overlay applied after every delta (e.g. params/eval/grpo_probe.yaml: the session-sized
    RL budget and evaluation): the same study at another size, with its own run names and plan file; notebook
    06's summary is left to the full-size study. `partial`: see the module docstring.
    """
    start = time.monotonic()
    base = Path(base)
    base_cfg = load_config(base)
    outputs, results = resolve(base_cfg.outputs_dir), resolve(results_dir)
    scale = Path(scale) if scale is not None else None
    abls = collect(base, [Path(d) for d in deltas], scale)
    paused = paused_stages(outputs)
    for ab in abls:
        ab.status, ab.note = record_state(ab, results, retry_failed)
        if ab.status == LEFT and (note := paused_note(ab, paused)):
            ab.note = "; ".join(x for x in (ab.note, note) if x)
        if ab.status == LEFT and (saved := saved_rows(results, ab.run)):
            note = f"{sum(saved.values())} stage-05 rows of {len(saved)} system caches kept in results/partial"
            ab.note = "; ".join(x for x in (ab.note, note) if x)
    model = CostModel(stage_seconds or estimated_seconds, abls[0].files, abls[0].run, outputs, results)
    if not dry_run:
        budget_s = math.inf if budget_min is None else budget_min * 60
        queue = [ab for ab in abls if ab.status == LEFT]
        run_queue(queue, outputs, results, model, start + budget_s, command, partial)
    estimate_left([ab for ab in abls if ab.status in (LEFT, FAILED, PAUSED)], model)
    print(format_table(abls))
    write_json(results / study_file(scale), study_json(abls, base, budget_min, dry_run, scale))
    if not dry_run and scale is None:
        summarise(abls, results, ablation_summary_file(base_cfg))
    return abls
