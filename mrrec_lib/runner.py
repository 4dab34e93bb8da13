"""Execute the numbered notebooks of a run with papermill.

Each notebook gets the run's merged `config.yaml` as its `config_file`
parameter, so a notebook opened later in Jupyter from the run folder shows
exactly what it ran with. Stages whose config hash matches a finished record
are skipped; a stage that reruns invalidates everything downstream.

A run may be given a deadline (a session ends, a longer stage than a session
must still advance): a training stage checkpoints and stops at the last step
boundary before it (`mrrec_lib.deadline`), any other stage's kernel is killed
at the deadline, and the run stops with `StagePaused`. Every long stage resumes
from what it wrote (memory parts files, trainer checkpoints, the evaluation's
per-batch results), so the next `mrrec run`/`mrrec ablate` of the same config
continues it; the time spent is kept (`stages.record_pause`) and added to the
stage's record when it finishes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from mrrec_lib import stages
from mrrec_lib.config import Config, load_config, save_config
from mrrec_lib.deadline import DeadlineReached, handed_to_kernels
from mrrec_lib.runs import STAGES, RunPaths, project_root, run_paths

# The stages that train policies: a run that evaluates another run's policies (`eval_models_run`) runs neither.
TRAINING_STAGES = ("03", "04")


class StageFailed(RuntimeError):
    """A notebook raised; the executed copy in the run folder shows where."""


class StagePaused(RuntimeError):
    """The run reached its deadline inside or before `stage`; rerunning the same config resumes it."""

    def __init__(self, stage: str, seconds: float, total: float):
        super().__init__(
            f"stage {STAGES[stage]} paused at the deadline after {seconds / 60:.1f} min "
            f"({total / 60:.1f} min in all); rerun the same config to resume it"
        )
        self.stage, self.seconds, self.total = stage, seconds, total


@contextmanager
def kill_at(deadline: float | None) -> Iterator[Callable[[], bool]]:
    """Kill this process's children (a stage's kernel and whatever it started) at `deadline` (a `time.time()`
    value); yield a function telling whether that happened.

    A kill, not a polite interrupt: a kernel deep in a forward pass does not see a KeyboardInterrupt for minutes,
    and every stage already resumes from files written atomically, so only the work since its last checkpoint
    is lost.
    """
    fired = threading.Event()
    if deadline is None:
        yield fired.is_set
        return
    import psutil

    def kill() -> None:
        fired.set()
        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass

    timer = threading.Timer(max(0.0, deadline - time.time()), kill)
    timer.daemon = True
    timer.start()
    try:
        yield fired.is_set
    finally:
        timer.cancel()


def notebook_path(stage: str) -> Path:
    path = project_root() / "notebooks" / f"{STAGES[stage]}.ipynb"
    if not path.exists():
        raise FileNotFoundError(f"notebook for stage {stage} not found: {path}")
    return path


def available_stages() -> list[str]:
    nb_dir = project_root() / "notebooks"
    return [s for s, name in STAGES.items() if (nb_dir / f"{name}.ipynb").exists()]


def parse_only(only: str | None) -> list[str]:
    if not only:
        return available_stages()
    wanted = [s.strip().zfill(2) for s in only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {sorted(STAGES)}")
    return sorted(wanted)


def prepare_run(params: list[str | Path], overrides: dict | None = None) -> tuple[Config, RunPaths]:
    cfg = load_config(*params, overrides=overrides)
    paths = run_paths(cfg)
    save_config(cfg, paths.config_file)
    return cfg, paths


def execute_stage(stage: str, cfg: Config, paths: RunPaths, log_output: bool = False) -> float:
    """Run one notebook into the run folder; return its wall time in seconds."""
    import papermill as pm

    out = paths.notebooks / f"{STAGES[stage]}.ipynb"
    env_root = str(project_root())
    os.environ.setdefault("MRREC_ROOT", env_root)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook_path(stage)),
            str(out),
            parameters={"config_file": str(paths.config_file), "run_name": cfg.run_name},
            kernel_name="python3",
            cwd=env_root,
            autosave_cell_every=30,
            progress_bar=False,
            log_output=log_output,
        )
    except pm.PapermillExecutionError as e:
        if e.ename == DeadlineReached.__name__:  # the trainer checkpointed and stopped before the deadline
            raise DeadlineReached(e.evalue) from e
        raise StageFailed(f"stage {STAGES[stage]} failed ({e.ename}: {e.evalue}); see {out}") from e
    return time.perf_counter() - start


def _needs_recr1_companion(cfg: Config) -> bool:
    """Table 1's Rec-R1 row is trained by a params delta in its own run folder (docs/decisions.md)."""
    return (
        "recr1" in cfg.eval_systems
        and bool(cfg.eval_recr1_run and cfg.eval_recr1_params)
        and cfg.eval_recr1_run != cfg.run_name
        and not cfg.eval_models_run
    )


def _drop_training_stages(cfg: Config, todo: list[str]) -> list[str]:
    """Stages 03/04 do not apply to a run whose policies come from `eval_models_run`: say so and leave them out."""
    if not cfg.eval_models_run:
        return todo
    dropped = [STAGES[s] for s in todo if s in TRAINING_STAGES]
    if dropped:
        tqdm.write(
            f"[{', '.join(dropped)}] not run: the policies come from run {cfg.eval_models_run} (eval_models_run)"
        )
    return [s for s in todo if s not in TRAINING_STAGES]


def run(
    params: list[str | Path],
    only: str | None = None,
    overrides: dict | None = None,
    force: bool = False,
    log_output: bool = False,
    deadline: float | None = None,
) -> RunPaths:
    """Run the selected stages in order, skipping those already current for this config; stop with `StagePaused`
    at `deadline` (a `time.time()` value; None: none)."""
    cfg, paths = prepare_run(params, overrides)
    todo = _drop_training_stages(cfg, parse_only(only))
    rerun_downstream = force
    bar = tqdm(todo, desc=f"run {cfg.run_name}", unit="stage")
    for stage in bar:
        bar.set_postfix_str(STAGES[stage])
        if not rerun_downstream and stages.is_current(paths, stage, cfg):
            tqdm.write(f"[{STAGES[stage]}] up to date (config hash {stages.stage_hash(cfg, stage)}), skipped")
            continue
        rerun_downstream = True
        if stage == "05" and _needs_recr1_companion(cfg):
            from mrrec_lib.ablate import train_recr1_companion

            train_recr1_companion(params, overrides, cfg, deadline)
        if deadline is not None and time.time() >= deadline:
            raise StagePaused(stage, 0.0, stages.read_paused(paths).get(stage, {}).get("seconds", 0.0))
        stages.forget_from(paths, stage)
        start = time.perf_counter()
        with kill_at(deadline) as killed, handed_to_kernels(deadline):
            try:
                seconds = execute_stage(stage, cfg, paths, log_output=log_output)
            except Exception as e:
                if not (killed() or isinstance(e, DeadlineReached)):
                    raise
                spent = time.perf_counter() - start
                raise StagePaused(stage, spent, stages.record_pause(paths, stage, cfg, spent)) from e
        stages.record_stage(paths, stage, cfg, seconds)
        tqdm.write(f"[{STAGES[stage]}] done in {seconds:.0f}s -> {paths.notebooks / (STAGES[stage] + '.ipynb')}")
    return paths
