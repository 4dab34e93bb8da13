"""What a run of the ablation study will cost before it starts: the stages it will actually run, and their time.

`mrrec ablate --budget-min` starts a run only if it fits the session, so a run's cost must count only the
stages it will execute given what already exists. That mirrors the runner: a run folder with stage records
skips its leading current stages (`runner.run`); an empty one is first seeded with the longest matching
stage prefix of any other run (`ablate.seed_from_donor`). Runs queued earlier in the same study count as
finished, because they will be by the time a later one starts, and a run whose stage 05 trains the Rec-R1
companion first (`runner._needs_recr1_companion`) also pays for the companion's stages 01-04. A stage that an
earlier `--partial` invocation paused at its deadline resumes from its checkpoints, so its price is reduced: a
training stage by the share of its steps its newest checkpoint holds, the evaluation by the rows each system still
lacks at the seconds per request its logged rows took (a policy's own answer length sets its speed: grpo_seed_1
decoded at 6.2 s per request where the records' median is 4.1; a GRPO policy not yet started at its SFT start's
speed, `GRPO_START`, and not at all if GRPO kept that start, whose answers stage 05 reuses), any other by the time
it already spent (`resumed_seconds`).

Per-stage seconds come from `estimate.estimate` (benchmark speeds times data sizes). Its absolute figures are
rough, so once the base run has measured a stage with the base params, that measurement sets the scale
(`calibrate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mrrec_lib import runner, stages
from mrrec_lib.ablate import STAGE_ARTEFACTS
from mrrec_lib.config import Config, load_config
from mrrec_lib.estimate import estimate
from mrrec_lib.runs import RunPaths, read_json, read_jsonl, resolve
from mrrec_lib.train.checkpoints import (
    POLICY_META,
    STAGE_OF,
    checkpoints_dir,
    final_dir,
    read_policy_meta,
    trainer_state,
)

STAGE_ORDER = tuple(STAGE_ARTEFACTS)  # the stages a study run executes, in order
COMPANION_STAGES = ("01", "02", "03", "04")  # what `ablate.train_recr1_companion` runs
# Least share of a paused stage's price still charged when it resumes without a trainer checkpoint to measure its
# progress: time spent overstates progress, because a resumed stage reloads its model, redoes the work since its last
# parts file and may run slower than priced (grpo-probe-topk_4 had spent 52 of its 57 priced minutes at step 14 of 20,
# checkpoint 10).
RESUME_FLOOR = 0.5
# A paused evaluation scores the SFT policy before the GRPO policy trained from it, so the GRPO rows may be unstarted.
# Their speed is the SFT policy's logged speed, not the records' median: a few GRPO steps barely change answer length
# (full-size runs: GRPO/SFT seconds per request 0.86-1.01), and local_patterns_only's GRPO rows, priced at the
# median 4.15 s, took 5.76 s where its SFT rows had logged 5.88 (94 min of stage 05 against 70 priced).
GRPO_START = {"mrrec": "mrrec_sft"}

StageSeconds = Callable[[tuple[Path, ...]], dict[str, float]]
EvalWork = tuple[int, dict[str, float]]  # requests each system scores, and its seconds per request
Hashes = dict[str, str]


def estimated_seconds(files: tuple[Path, ...]) -> dict[str, float]:
    """`mrrec estimate`'s seconds per stage ("01".."05") for the merged params `files`."""
    return {row["stage"][:2]: float(row["seconds"]) for row in estimate(list(files))["rows"]}


def estimated_eval_work(files: tuple[Path, ...]) -> EvalWork:
    """`mrrec estimate`'s stage-05 work for the merged params `files`: requests, and seconds per request by system."""
    work = estimate(list(files))["eval_work"]
    return int(work["requests"]), {k: float(v) for k, v in work["seconds_per_request"].items()}


def calibrate(est: float, est_base: float, measured: float | None) -> float:
    """One stage's seconds for an ablation, from its estimate, the base run's estimate and the base's measurement.

    The measurement prices the work the ablation shares with the base; the estimates' difference prices the rest.
    Less work than the base (e.g. two evaluated systems instead of ten) scales the measured time down by the
    estimates' ratio; more (e.g. an LLM memory builder) adds the extra at benchmark speed to the measured time.
    Without a measurement, or when the base's estimate is zero (a stage it disables), the raw estimate is used.
    """
    if measured is None or est_base <= 0:
        return est
    return measured * min(1.0, est / est_base) + max(0.0, est - est_base)


def measured_seconds(run: str, outputs: Path, results: Path, hashes: Hashes | None = None) -> dict[str, float]:
    """Stage wall times the run recorded: from its committed record, else from its run folder.

    With `hashes`, only stages recorded under those config hashes count: a base record made with other params
    (e.g. stage 05 with the no-LLM rows only, 160 s instead of hours) would otherwise price every ablation's
    evaluation at a fraction of its cost.
    """
    out: dict[str, float] = {}
    for folder in (outputs / run, results / run):  # the record, a complete run, wins
        f = folder / "stages.json"
        if f.exists():
            out |= {
                s: float(r["seconds"])
                for s, r in read_json(f).items()
                if r.get("seconds") is not None and (hashes is None or r.get("hash") == hashes.get(s))
            }
    return out


def stage_hashes(cfg: Config, which: tuple[str, ...] = STAGE_ORDER) -> Hashes:
    return {s: stages.stage_hash(cfg, s) for s in which}


def finished_stages(outputs: Path) -> dict[str, Hashes]:
    """Per run folder under outputs/, the config hash of each finished stage."""
    if not outputs.exists():
        return {}
    return {
        f.name: {s: r["hash"] for s, r in read_json(f / "stages.json").items()}
        for f in sorted(outputs.iterdir())
        if (f / "stages.json").exists()
    }


class Paused(NamedTuple):
    """A stage paused at a deadline: the config it ran under, its wall time so far and, for a training stage, the
    newest checkpoint's step and the trainer's step budget (`checkpoint_steps`); for the evaluation, the rows
    each system has logged, their mean seconds per request (`logged_rows`, `logged_latency`) and the systems whose
    answers it reuses from another's instead of decoding (`reused_systems`)."""

    hash: str
    seconds: float
    steps: tuple[int, int] | None = None
    rows: dict[str, int] | None = None
    latency: dict[str, float] | None = None
    reused: tuple[str, ...] = ()


def checkpoint_steps(paths: RunPaths, stage: str) -> tuple[int, int] | None:
    """(step, max steps) of the stage's newest complete trainer checkpoint, which its resume starts from; a save cut
    short (`checkpoints.trainer_state` is None) is dropped by the resume and not counted."""
    states = [
        trainer_state(ckpt)
        for which, s in STAGE_OF.items()
        if s == stage
        for ckpt in checkpoints_dir(paths, which).glob("checkpoint-*")
    ]
    found = [(int(st["global_step"]), int(st["max_steps"])) for st in states if st and st.get("max_steps")]
    return max(found) if found else None


def _newest_logs(paths: RunPaths) -> dict[str, list[dict]]:
    """Per system, the rows of its newest stage-05 log (`logs/05_eval/<system>-<fingerprint>.jsonl`), which a resumed
    evaluation keeps; an older log of the same system was written under another fingerprint."""
    newest: dict[str, Path] = {}
    for log in sorted((paths.logs / "05_eval").glob("*-*.jsonl")):
        system = log.stem.rsplit("-", 1)[0]
        if system not in newest or log.stat().st_mtime > newest[system].stat().st_mtime:
            newest[system] = log
    return {system: read_jsonl(log) for system, log in newest.items()}


def logged_rows(paths: RunPaths) -> dict[str, int]:
    """Per system, the per-request rows a resumed evaluation keeps."""
    return {system: len(rows) for system, rows in _newest_logs(paths).items()}


def logged_latency(paths: RunPaths) -> dict[str, float]:
    """Per system, the mean seconds per request of the rows it logged; a system whose rows carry no latency is left
    out (priced by `mrrec estimate`)."""
    out = {}
    for system, rows in _newest_logs(paths).items():
        seconds = [float(r["latency_s"]) for r in rows if r.get("latency_s") is not None]
        if seconds:
            out[system] = sum(seconds) / len(seconds)
    return out


def reused_systems(paths: RunPaths) -> tuple[str, ...]:
    """The GRPO systems whose policy is their SFT start unchanged (stage 04 published step 0), which stage 05 scores
    by reusing the SFT policy's answers (`evaluate.unchanged_policy`): local_records_only's kept step 0, and its
    stage 05, priced 91 min with 801 GRPO rows to decode, took 33."""
    d = final_dir(paths, "grpo")
    if not (d / POLICY_META).exists():
        return ()
    meta = read_policy_meta(d)
    kept = meta.get("best_step") == 0 and meta.get("base") == {"which": "sft"}
    return tuple(GRPO_START) if kept else ()


def paused_stages(outputs: Path) -> dict[str, dict[str, Paused]]:
    """Per run folder under outputs/, each stage paused at a deadline."""
    if not outputs.exists():
        return {}
    out: dict[str, dict[str, Paused]] = {}
    for folder in sorted(f for f in outputs.iterdir() if f.is_dir()):
        paths = RunPaths(folder)
        if found := stages.read_paused(paths):
            out[folder.name] = {
                s: Paused(p["hash"], float(p["seconds"]), checkpoint_steps(paths, s))
                if s != "05"
                else Paused(
                    p["hash"], float(p["seconds"]), None, logged_rows(paths), logged_latency(paths), reused_systems(paths)
                )
                for s, p in found.items()
            }
    return out


def resumed_seconds(price: float, paused: Paused, work: EvalWork | None = None) -> float:
    """What is left of a stage priced `price` that was paused.

    A trainer checkpoint measures a training stage's progress in steps (the graceful stop saves one at the step it
    stops at), so the rest is priced as the share of steps left. An evaluation's logged rows measure its progress
    given `work` (requests per system, seconds per request): the rest is the weighted rows left over the weighted
    total, since a query row costs milliseconds and a policy row seconds, and a system that logged its latency is
    weighted by it rather than by the estimate (an unstarted GRPO policy by its SFT start's, `GRPO_START`; one whose
    answers are reused costs nothing). Otherwise, the price less the time already spent, never below
    `RESUME_FLOOR` of it.
    """
    if paused.steps is not None:
        step, max_steps = paused.steps
        return price * max(0.0, 1.0 - step / max_steps)
    if paused.rows is not None and work is not None:
        requests, per_request = work
        total = requests * sum(per_request.values())
        if total > 0:
            logged = paused.latency or {}
            start = {s: logged[sft] for s, sft in GRPO_START.items() if s not in logged and sft in logged}
            rate = per_request | {s: sec for s, sec in (start | logged).items() if s in per_request}
            rate |= {s: 0.0 for s in paused.reused if s in per_request}
            left = sum(max(0, requests - paused.rows.get(s, 0)) * rate[s] for s in per_request)
            return price * left / total
    return max(price - paused.seconds, RESUME_FLOOR * price)


def _prefix(want: Hashes, have: Hashes) -> int:
    n = 0
    for s in want:
        if have.get(s) != want[s]:
            break
        n += 1
    return n


def reused_stages(run: str, want: Hashes, known: dict[str, Hashes]) -> tuple[str, ...]:
    """The leading stages the run will not execute: current in its own folder, else seeded from the best donor."""
    own = known.get(run)
    n = _prefix(want, own) if own else max((_prefix(want, h) for r, h in known.items() if r != run), default=0)
    return tuple(want)[:n]


@dataclass(frozen=True)
class Job:
    """What costing needs about one run: its folder name, its params files and its stage hashes."""

    run: str
    files: tuple[Path, ...]
    hashes: Hashes
    companion: Job | None = None  # the Rec-R1 run its stage 05 trains first


def job_for(files: tuple[Path, ...], cfg: Config) -> Job:
    """The run's Job, with the Rec-R1 companion `runner.run` would train before its stage 05 (if any)."""
    companion = None
    delta = resolve(cfg.eval_recr1_params) if cfg.eval_recr1_params else None
    if runner._needs_recr1_companion(cfg) and delta is not None and delta.exists():
        c_files = (*files, delta)
        c_cfg = load_config(*c_files, overrides={"run_name": cfg.eval_recr1_run})
        companion = Job(c_cfg.run_name, c_files, stage_hashes(c_cfg, COMPANION_STAGES))
    return Job(cfg.run_name, files, stage_hashes(cfg), companion)


@dataclass
class CostModel:
    """Calibrated per-stage seconds of any params combination; raw estimates cached (they read the data sizes).

    The base run's measured stage times are re-read by `refresh`, so a base run finished earlier in the same
    session calibrates the estimates of the runs after it.
    """

    seconds: StageSeconds
    base_files: tuple[Path, ...]
    base_run: str
    outputs: Path
    results: Path
    work: Callable[[tuple[Path, ...]], EvalWork] = estimated_eval_work  # weighs a paused evaluation's logged rows

    def __post_init__(self) -> None:
        self._cache: dict[tuple[Path, ...], dict[str, float]] = {}
        self._work: dict[tuple[Path, ...], EvalWork] = {}
        self.base_hashes = stage_hashes(load_config(*self.base_files))
        self.refresh()

    def refresh(self) -> None:
        self.measured = measured_seconds(self.base_run, self.outputs, self.results, self.base_hashes)

    def _raw(self, files: tuple[Path, ...]) -> dict[str, float]:
        if files not in self._cache:
            self._cache[files] = self.seconds(files)
        return self._cache[files]

    def stage_seconds(self, files: tuple[Path, ...]) -> dict[str, float]:
        est, base = self._raw(files), self._raw(self.base_files)
        return {s: calibrate(est.get(s, 0.0), base.get(s, 0.0), self.measured.get(s)) for s in STAGE_ORDER}

    def eval_work(self, files: tuple[Path, ...]) -> EvalWork:
        if files not in self._work:
            self._work[files] = self.work(files)
        return self._work[files]


@dataclass(frozen=True)
class Cost:
    """The stages a run will execute (companion stages as "<run>:<stage>") and their estimated seconds."""

    stages: tuple[str, ...]
    seconds: float


def plan(
    jobs: list[Job],
    known: dict[str, Hashes],
    model: CostModel,
    paused: dict[str, dict[str, Paused]] | None = None,
) -> list[Cost]:
    """Each job's cost, in order, as if every earlier job in the list finished before it starts; a stage in
    `paused` (`paused_stages`) under the job's own hash is priced as resumed."""
    known = {run: dict(h) for run, h in known.items()}
    out = []
    for job in jobs:
        todo = [s for s in job.hashes if s not in reused_stages(job.run, job.hashes, known)]
        per_stage = model.stage_seconds(job.files)
        for s, p in (paused or {}).get(job.run, {}).items():
            if s in todo and p.hash == job.hashes[s]:
                per_stage[s] = resumed_seconds(per_stage[s], p, model.eval_work(job.files) if p.rows else None)
        seconds = sum(per_stage[s] for s in todo)
        labels = list(todo)
        if job.companion and "05" in todo:
            # The companion is seeded when stage 05 starts, i.e. with this run's stages 01-04 finished.
            known[job.run] = {s: job.hashes[s] for s in COMPANION_STAGES}
            c = job.companion
            c_todo = [s for s in c.hashes if s not in reused_stages(c.run, c.hashes, known)]
            c_seconds = model.stage_seconds(c.files)
            seconds += sum(c_seconds[s] for s in c_todo)
            labels += [f"{c.run}:{s}" for s in c_todo]
            if c_todo:
                known[c.run] = dict(c.hashes)
        known[job.run] = dict(job.hashes)
        out.append(Cost(tuple(labels), seconds))
    return out
