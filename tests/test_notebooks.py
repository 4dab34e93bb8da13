"""Every numbered notebook, executed end to end by the runner on params/smoke.yaml.

The run goes into a temporary outputs folder; each stage's test then reads back
the metrics JSON the notebook recorded, so a notebook that silently stops
recording (or records nonsense) fails here. Every stage runs in `make test`; the README gives the
suite's measured fresh-clone time.
"""

from pathlib import Path

import pytest

from mrrec_lib import runner
from mrrec_lib.config import load_config
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
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> RunPaths:
    outputs = tmp_path_factory.mktemp("outputs")
    overrides = {"outputs_dir": str(outputs)}  # the ablation summary defaults to <outputs_dir>/ablations
    try:
        return runner.run([ROOT / "params" / "smoke.yaml"], overrides=overrides)
    except runner.StageFailed as e:
        pytest.fail(str(e))


@pytest.mark.parametrize("stage", runner.available_stages())
def test_stage_recorded_metrics(smoke_run, stage):
    assert (smoke_run.notebooks / f"{STAGES[stage]}.ipynb").exists()
    metrics = read_json(smoke_run.metrics_file(METRIC_FILES[stage]))
    assert isinstance(metrics, dict) and metrics, f"stage {stage} recorded no metrics"


def test_data_metrics_report_no_leakage(smoke_run):
    assert read_json(smoke_run.metrics_file("01_data"))["leakage_violations"] == 0


def test_sft_trains_the_configured_steps_on_kept_trajectories(smoke_run):
    m = read_json(smoke_run.metrics_file("03_sft"))
    cfg = load_config(smoke_run.config_file)
    assert m["data"]["kept"] > 0 and m["train"]["last_step"] == cfg.sft_max_steps
    assert cfg.decode_no_repeat_ngram > 0  # so the guard's effect is measured too
    for policy in ("base", "sft", "sft, no repeat guard"):
        assert m["validation"][policy]["n"] == cfg.sft_eval_queries
        assert 0.0 <= m["validation"][policy]["format_rate"] <= 1.0


def test_grpo_runs_its_steps_and_reports_before_after(smoke_run):
    m = read_json(smoke_run.metrics_file("04_rl"))
    assert m["steps_run"] == load_config(smoke_run.config_file).grpo_max_steps
    assert len(m["before_after"]) == 2 and len(m["validation"]) >= 2
    # the learning-signal diagnostics come from the trainer's own logs of the KV-engine rollouts
    signal = m["signal_mean"]
    assert 0 <= signal["frac_reward_zero_std"] <= 1 and signal["entropy"] >= 0 and signal["grad_norm"] is not None
    assert (smoke_run.figures / "04_rl_signal.png").exists()


def test_evaluation_fills_every_system_it_can_run(smoke_run):
    m = read_json(smoke_run.metrics_file("05_eval"))
    cfg = load_config(smoke_run.config_file)
    assert m["split"] == "test" and m["n_queries"] == cfg.eval_max_queries
    # Rec-R1 included: stage 05 trained it first in its own folder (eval_recr1_params), from this run's data.
    assert {s: v["status"] for s, v in m["systems"].items()} == {s: "ok" for s in cfg.eval_systems}
    recr1 = RunPaths(smoke_run.root.parent / cfg.eval_recr1_run)
    recr1_rl = read_json(recr1.metrics_file("04_rl"))
    assert recr1_rl["steps_run"] == cfg.grpo_max_steps
    # the companion's params (params/smoke_recr1.yaml) switch its validation passes off
    assert recr1_rl["validation"] == [] and recr1_rl["paired"] == []
    assert read_json(recr1.metrics_file("03_sft"))["validation"] == {}
    assert (recr1.root / "data" / "queries.parquet").stat().st_ino == (
        smoke_run.root / "data" / "queries.parquet"
    ).stat().st_ino  # data hard-linked from this run, not rebuilt
    for v in m["systems"].values():
        if v["status"] == "ok":
            lo, mean, hi = (v["metrics"]["N@100"][x] for x in ("lo", "mean", "hi"))
            assert 0.0 <= lo <= mean <= hi <= 1.0
    assert all(Path(f).exists() for f in m["files"].values())


def test_assistant_answers_with_top_k_items(smoke_run):
    m = read_json(smoke_run.metrics_file("07_assistant"))
    cfg = load_config(smoke_run.config_file)
    assert (m["user_id"], m["request"]) == (cfg.assistant_user, cfg.assistant_request)  # the parameterized request
    assert len(m["top_items"]) == cfg.assistant_k


def test_rerun_skips_current_stages(smoke_run):
    before = {p.name: p.stat().st_mtime for p in smoke_run.notebooks.glob("*.ipynb")}
    runner.run([smoke_run.config_file], only=",".join(s for s in runner.available_stages() if s not in ("06", "07")))
    after = {p.name: p.stat().st_mtime for p in smoke_run.notebooks.glob("*.ipynb")}
    assert before and before == after


def test_evaluate_smoke_run_on_other_data(smoke_run, tmp_path):
    """`mrrec evaluate`: the smoke run's policies scored on another source, stages 01/02/05 only, nothing retrained."""
    from mrrec_lib import stages
    from mrrec_lib.evaluate_run import EVALUATED_FROM, evaluate_run

    trained_records = stages.read_records(smoke_run)
    delta = tmp_path / "agenticshop.yaml"
    # the trained policies and one reference row are what this test is about; the smoke run covers the full table
    delta.write_text(
        "sources: [agenticshop]\neval_max_queries: 2\neval_systems: [query_dense, recr1, mrrec_sft, mrrec]\n"
        "eval_reference_system: mrrec\neval_pool_fractions: []\n"
    )

    paths = evaluate_run(smoke_run.root, [delta])

    assert paths.root == smoke_run.root.parent / f"{smoke_run.root.name}-on-agenticshop"
    assert stages.read_records(smoke_run) == trained_records
    assert sorted(stages.read_records(paths)) == ["01", "02", "05"]
    assert not (paths.models / "sft").exists() and not (paths.models / "grpo").exists()
    m = read_json(paths.metrics_file("05_eval"))
    assert m["n_queries"] == 2
    assert read_json(paths.root / EVALUATED_FROM)["trained_run"] == smoke_run.root.name
    policies = {s: v["status"] for s, v in m["systems"].items() if s in ("recr1", "mrrec_sft", "mrrec")}
    assert policies == {"recr1": "ok", "mrrec_sft": "ok", "mrrec": "ok"}
