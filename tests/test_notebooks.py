"""Every numbered notebook, executed end to end by the runner on params/smoke.yaml.

The run goes into a temporary outputs folder; each stage's test then reads back
the metrics JSON the notebook recorded, so a notebook that silently stops
recording (or records nonsense) fails here. `VERIFIED_STAGES` run in `make test`;
the rest run under `-m slow` (`make test-all`) until their smoke timing on an idle
2-core machine is known to fit the CI budget.
"""

from pathlib import Path

import pytest

from mrrec_lib import runner
from mrrec_lib.runs import STAGES, RunPaths, read_json

pytestmark = pytest.mark.notebooks

METRIC_FILES = {
    "01": "01_data",
    "02": "02_memory",
    "03": "03_sft",
    "04": "04_rl",
    "05": "05_eval",
    "06": "06_ablations",
    "07": "07_assistant",
}
VERIFIED_STAGES = ("01", "02")
ROOT = Path(__file__).resolve().parents[1]


def _smoke(tmp_path_factory, stages: tuple[str, ...]) -> RunPaths:
    outputs = tmp_path_factory.mktemp("outputs")
    overrides = {"outputs_dir": str(outputs), "ablation_summary": str(outputs / "ablations" / "summary.csv")}
    try:
        return runner.run([ROOT / "params" / "smoke.yaml"], only=",".join(stages), overrides=overrides)
    except runner.StageFailed as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> RunPaths:
    return _smoke(tmp_path_factory, VERIFIED_STAGES)


@pytest.fixture(scope="module")
def full_smoke_run(tmp_path_factory) -> RunPaths:
    return _smoke(tmp_path_factory, tuple(runner.available_stages()))


def _check(paths: RunPaths, stage: str) -> None:
    assert (paths.notebooks / f"{STAGES[stage]}.ipynb").exists()
    metrics = read_json(paths.metrics_file(METRIC_FILES[stage]))
    assert isinstance(metrics, dict) and metrics, f"stage {stage} recorded no metrics"


@pytest.mark.parametrize("stage", VERIFIED_STAGES)
def test_stage_recorded_metrics(smoke_run, stage):
    _check(smoke_run, stage)


@pytest.mark.slow
@pytest.mark.parametrize("stage", runner.available_stages())
def test_every_stage_recorded_metrics(full_smoke_run, stage):
    _check(full_smoke_run, stage)


def test_data_metrics_report_no_leakage(smoke_run):
    assert read_json(smoke_run.metrics_file("01_data"))["leakage_violations"] == 0


def test_rerun_skips_current_stages(smoke_run):
    before = {p.name: p.stat().st_mtime for p in smoke_run.notebooks.glob("*.ipynb")}
    runner.run([smoke_run.config_file], only=",".join(VERIFIED_STAGES))
    after = {p.name: p.stat().st_mtime for p in smoke_run.notebooks.glob("*.ipynb")}
    assert before and before == after
