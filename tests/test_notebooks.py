"""Every numbered notebook, executed end to end by the runner on params/smoke.yaml.

The run goes into a temporary outputs folder; each stage's test then reads back
the metrics JSON the notebook recorded, so a notebook that silently stops
recording (or records nonsense) fails here.
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


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> RunPaths:
    root = Path(__file__).resolve().parents[1]
    outputs = tmp_path_factory.mktemp("outputs")
    overrides = {"outputs_dir": str(outputs), "ablation_summary": str(outputs / "ablations" / "summary.csv")}
    try:
        return runner.run([root / "params" / "smoke.yaml"], overrides=overrides)
    except runner.StageFailed as e:
        pytest.fail(str(e))


@pytest.mark.parametrize("stage", runner.available_stages())
def test_stage_recorded_metrics(smoke_run, stage):
    assert (smoke_run.notebooks / f"{STAGES[stage]}.ipynb").exists()
    metrics = read_json(smoke_run.metrics_file(METRIC_FILES[stage]))
    assert isinstance(metrics, dict) and metrics, f"stage {stage} recorded no metrics"


def test_rerun_skips_current_stages(smoke_run):
    stages = runner.available_stages()
    cfg_file = smoke_run.config_file
    before = {p.name: p.stat().st_mtime for p in smoke_run.notebooks.glob("*.ipynb")}
    runner.run([cfg_file], only=",".join(s for s in stages if s not in ("06", "07")))
    after = {p.name: p.stat().st_mtime for p in smoke_run.notebooks.glob("*.ipynb")}
    assert all(before[n] == after[n] for n in before if not n.startswith(("06", "07")))
