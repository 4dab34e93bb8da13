"""A run's deadline, handed from the runner to a stage's kernel, so training stops at a step boundary before it.

`mrrec run/ablate --budget-min` kills a stage's kernel at the deadline (`runner.kill_at`), and a killed trainer
resumes from its last periodic checkpoint, so up to `*_save_every` steps are redone next time (the study's topk_4
lost ~20 min that way over two pauses). The runner puts the deadline in `DEADLINE_ENV` for the kernel; the trainer
(`train.callbacks.SaveBeforeDeadline`) saves and stops after the last step that fits and the stage raises
`DeadlineReached`, which the runner reports as a pause, like a kill. The kill stays as the backstop for whatever
runs longer than foreseen. Torch-free: the runner imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

DEADLINE_ENV = "MRREC_DEADLINE"


class DeadlineReached(RuntimeError):
    """A training stage saved a checkpoint and stopped because its next step would end past the run's deadline."""


def deadline_from_env() -> float | None:
    """The run's deadline (a `time.time()` value) when the runner set one for this kernel."""
    value = os.environ.get(DEADLINE_ENV)
    if not value:
        return None
    try:
        return float(value)
    except ValueError as e:
        raise ValueError(f"{DEADLINE_ENV}={value!r} is not a time.time() value") from e


@contextmanager
def handed_to_kernels(deadline: float | None) -> Iterator[None]:
    """Set `DEADLINE_ENV` for the kernels started inside (they inherit this process's environment)."""
    before = os.environ.get(DEADLINE_ENV)
    if deadline is None:
        os.environ.pop(DEADLINE_ENV, None)
    else:
        os.environ[DEADLINE_ENV] = repr(float(deadline))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DEADLINE_ENV, None)
        else:
            os.environ[DEADLINE_ENV] = before
