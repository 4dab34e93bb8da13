"""A run with a deadline: the stage's real kernel is killed, the run pauses, and the same run resumes and finishes.

Runs papermill on two tiny notebooks in place of stage 01 (one sleeps past the deadline, one finishes), so the kill
path is the one `mrrec ablate --partial` and `mrrec run --budget-min` take, without a model.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from mrrec_lib import cli, runner, stages
from mrrec_lib.deadline import DEADLINE_ENV, DeadlineReached
from mrrec_lib.runs import RunPaths
from mrrec_lib.train.common import drop_unfinished_checkpoints


def _notebook(path: Path, code: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nb.cells = [nbformat.v4.new_code_cell("config_file = run_name = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def params(tmp_path: Path) -> Path:
    f = tmp_path / "base.yaml"
    f.write_text(f"run_name: base\noutputs_dir: {tmp_path / 'outputs'}\n")
    return f


def test_the_deadline_kills_the_kernel_and_the_rerun_finishes_with_the_paused_time(tmp_path, params, monkeypatch):
    started = tmp_path / "started"
    sleeper = _notebook(tmp_path / "sleep.ipynb", f"open({str(started)!r}, 'w').close()\nimport time\ntime.sleep(300)")
    monkeypatch.setattr(runner, "notebook_path", lambda stage: sleeper)
    t0 = time.time()
    with pytest.raises(runner.StagePaused, match="stage 01_data_prep paused at the deadline") as paused:
        runner.run([params], only="01", deadline=t0 + 12)
    assert time.time() - t0 < 60 and started.exists()  # the cell ran, and did not sleep its 300 s
    assert paused.value.stage == "01" and paused.value.seconds >= 5
    assert not [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]
    run = RunPaths(tmp_path / "outputs" / "base")
    assert stages.read_records(run) == {}
    assert stages.read_paused(run)["01"]["seconds"] == pytest.approx(paused.value.seconds, abs=0.2)

    with pytest.raises(runner.StagePaused, match=r"after 0.0 min"):  # a deadline already past starts nothing
        runner.run([params], only="01", deadline=time.time() - 1)

    monkeypatch.setattr(runner, "notebook_path", lambda stage: _notebook(tmp_path / "quick.ipynb", "x = 1"))
    runner.run([params], only="01")
    record = stages.read_records(run)["01"]
    assert record["paused_seconds"] == pytest.approx(paused.value.seconds, abs=0.2)
    assert record["seconds"] > record["paused_seconds"] and stages.read_paused(run) == {}


def test_a_trainer_stopping_before_the_deadline_pauses_the_run_without_a_kill(tmp_path, params, monkeypatch):
    seen = tmp_path / "deadline_seen"
    code = (f"import os\nopen({str(seen)!r}, 'w').write(os.environ[{DEADLINE_ENV!r}])\n"
            "from mrrec_lib.deadline import DeadlineReached\nraise DeadlineReached('saved checkpoint-7 and stopped')")
    monkeypatch.setattr(runner, "notebook_path", lambda stage: _notebook(tmp_path / "stops.ipynb", code))
    monkeypatch.delenv(DEADLINE_ENV, raising=False)
    deadline = time.time() + 600
    with pytest.raises(runner.StagePaused, match="stage 01_data_prep paused at the deadline") as paused:
        runner.run([params], only="01", deadline=deadline)
    assert float(seen.read_text()) == pytest.approx(deadline)  # the kernel was handed the deadline
    assert isinstance(paused.value.__cause__, DeadlineReached) and time.time() < deadline  # stopped, not killed
    assert DEADLINE_ENV not in os.environ  # handed to the kernel only
    assert stages.read_paused(RunPaths(tmp_path / "outputs" / "base"))["01"]["seconds"] == pytest.approx(
        paused.value.seconds, abs=0.2)

    monkeypatch.setattr(runner, "notebook_path", lambda stage: _notebook(tmp_path / "fails.ipynb", "raise ValueError('x')"))
    with pytest.raises(runner.StageFailed, match="ValueError"):  # any other error is a failure, deadline or not
        runner.run([params], only="01", deadline=deadline)


def test_cli_run_budget_exits_paused(params, monkeypatch, capsys):
    def pause(*args, deadline=None, **kw):
        assert deadline is not None and deadline > time.time()
        raise runner.StagePaused("04", 60.0, 90.0)

    monkeypatch.setattr(runner, "run", pause)
    assert cli.main(["run", str(params), "--budget-min", "5"]) == cli.PAUSED_EXIT
    assert "paused: stage 04_rl_training paused at the deadline after 1.0 min (1.5 min in all)" in capsys.readouterr().err


def test_checkpoints_cut_short_are_dropped_before_resuming(tmp_path):
    for step, state in ((5, '{"global_step": 5}'), (10, '{"global_'), (15, None)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "adapter_model.safetensors").write_bytes(b"\0")
        if state is not None:
            (ckpt / "trainer_state.json").write_text(state)
    assert drop_unfinished_checkpoints(tmp_path) == [tmp_path / "checkpoint-10", tmp_path / "checkpoint-15"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]
    assert json.loads((tmp_path / "checkpoint-5" / "trainer_state.json").read_text())["global_step"] == 5
