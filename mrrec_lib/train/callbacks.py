"""Trainer callbacks: per-step logs to the run folder, validation with early stopping, and a stop before the deadline.

The first two keep their state in append-only JSONL files under `paths.logs`, so a resumed
run continues its curves and its patience counter instead of starting them over; rows
a killed run wrote after its last checkpoint are dropped on resume, since those steps rerun.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import TrainerCallback

from mrrec_lib.deadline import DeadlineReached
from mrrec_lib.runs import append_jsonl, atomic_write_text, read_jsonl, write_jsonl


class StepLogger(TrainerCallback):
    """Writes every trainer log (loss, reward and its parts, KL, lengths, tool calls) plus wall and CPU step time.

    TRL logs `reward`, `rewards/<func>/mean`, `kl`, `completions/mean_length`,
    `tools/call_frequency` (tool calls per rollout), ...; all of it is kept, one
    JSONL row per logging step, and mirrored to CSV at the end for spreadsheets.
    """

    def __init__(self, jsonl_path: Path):
        self.jsonl_path = jsonl_path
        self._step_start = time.perf_counter()
        self._cpu_start = time.process_time()
        self._step_seconds = math.nan
        self._cpu_seconds = math.nan

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self._step_seconds = time.perf_counter() - self._step_start
        self._cpu_seconds = time.process_time() - self._cpu_start

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {
            "step": state.global_step,
            "epoch": state.epoch,
            "step_seconds": self._step_seconds,
            "step_cpu_seconds": self._cpu_seconds,  # all threads; wall time on a shared machine overstates cost
            **logs,
        }
        append_jsonl(self.jsonl_path, [row])

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            rows_up_to(self.jsonl_path, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_csv_mirror(self.jsonl_path)


def rows_up_to(jsonl_path: Path, step: int, rewrite: bool = True) -> list[dict[str, Any]]:
    """The log's rows up to `step` (the checkpoint a run resumes from), rewriting the file without the rest."""
    rows = read_jsonl(jsonl_path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    if rewrite and len(kept) < len(rows):
        write_jsonl(jsonl_path, kept)
    return kept


def write_csv_mirror(jsonl_path: Path) -> Path:
    rows = read_jsonl(jsonl_path)
    csv_path = jsonl_path.with_suffix(".csv")
    atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    return csv_path


class ValidationCallback(TrainerCallback):
    """Evaluates the policy on the validation queries every `every` steps; keeps the best; stops on no improvement.

    `evaluate(model)` returns a dict containing the float `metric` (other values, e.g.
    per-query lists, are logged as they are); `save_best(step)`
    persists the current weights as the best so far. The starting policy is
    evaluated before the first update (step 0), so "best" may be the start when RL
    does not help, and the before/after comparison uses the same code path.
    """

    def __init__(
        self,
        evaluate: Callable[[Any], dict[str, Any]],
        save_best: Callable[[int], None],
        log_path: Path,
        every: int,
        patience: int,
        metric: str = "ndcg@100",
    ):
        if every <= 0:
            raise ValueError(f"validation every {every} steps: must be >= 1 (set grpo_eval_every)")
        self.evaluate = evaluate
        self.save_best = save_best
        self.log_path = log_path
        self.every = every
        self.patience = patience
        self.metric = metric
        self.history: list[dict[str, Any]] = read_jsonl(log_path)
        self.best_value, self.best_step, self.bad_evals = self._replay(self.history)

    def _replay(self, history: list[dict[str, Any]]) -> tuple[float, int, int]:
        best, best_step, bad = -math.inf, -1, 0
        for row in history:
            if row[self.metric] > best:
                best, best_step, bad = row[self.metric], row["step"], 0
            else:
                bad += 1
        return best, best_step, bad

    def _run(self, step: int, model: Any, control, main_process: bool = True) -> None:
        if any(row["step"] == step for row in self.history):
            return
        was_training = model.training
        model.eval()
        try:
            start = time.perf_counter()
            metrics = self.evaluate(model)
        finally:
            if was_training:
                model.train()
        value = metrics[self.metric]
        improved = value > self.best_value
        if improved:
            self.best_value, self.best_step, self.bad_evals = value, step, 0
            self.save_best(step)
        else:
            self.bad_evals += 1
        row = {"step": step, "seconds": time.perf_counter() - start, "improved": improved, **metrics}
        self.history.append(row)
        if main_process:  # every process evaluates (same greedy result); one writes the log
            append_jsonl(self.log_path, [row])
        if self.bad_evals >= self.patience:
            control.should_training_stop = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.history = rows_up_to(self.log_path, state.global_step, rewrite=state.is_world_process_zero)
        self.best_value, self.best_step, self.bad_evals = self._replay(self.history)
        # Only on the schedule: a run resumed from an off-schedule checkpoint (a deadline stop at step 18 of a
        # every-10 schedule) validated there once, which added a candidate and a patience count an uninterrupted
        # run never has (grpo-probe-topk_5 kept step 18 over a tied step 20), so a pause changed the kept policy.
        if state.global_step % self.every == 0:
            self._run(state.global_step, model, control, state.is_world_process_zero)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._run(state.global_step, model, control, state.is_world_process_zero)


class SaveBeforeDeadline(TrainerCallback):
    """Checkpoints and stops training once the longest interval between two step ends (a step plus whatever
    callbacks ran at its end, e.g. a validation) and a checkpoint's save no longer fit before the run's deadline
    (`mrrec_lib.deadline`); `raise_if_stopped` then turns the stop into a pause.

    Put it first among the callbacks: its clock then starts before a validation run at `on_train_begin`, so the
    first interval already includes one.
    """

    save_allowance_s = 60.0  # a LoRA checkpoint with its optimizer state on 2 cores, with room to spare

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.stopped_at: int | None = None
        self._last = time.time()
        self._longest = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.time()
        self._longest = max(self._longest, now - self._last)
        self._last = now
        last = state.max_steps > 0 and state.global_step >= state.max_steps  # training ends here anyway: finish it
        if self.deadline is not None and not last and now + self._longest + self.save_allowance_s >= self.deadline:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def raise_if_stopped(self) -> None:
        """Call after `trainer.train()`: a stop for the deadline is a pause, never a finished stage."""
        if self.stopped_at is not None:
            raise DeadlineReached(
                f"saved checkpoint-{self.stopped_at} and stopped: the next step would end past the deadline "
                f"({time.strftime('%H:%M:%S', time.localtime(self.deadline))}); rerunning the same config resumes it"
            )
