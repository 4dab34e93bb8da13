"""The ablation batch runner end to end, with notebooks replaced by a recorder (no model runs).

What is checked is the orchestration `mrrec ablate` promises: upstream stages shared
with another run are not rerun, a failing configuration does not stop the batch,
the Rec-R1 companion is trained once before the base run's evaluation, and a
second invocation does no work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mrrec_lib import ablate, runner
from mrrec_lib.runs import STAGES, RunPaths, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recorder(monkeypatch):
    """Replaces papermill: records (run, stage), writes the artefacts later stages and the summary read."""
    calls: list[tuple[str, str]] = []

    def execute_stage(stage, cfg, paths: RunPaths, log_output=False):
        if cfg.seed == 13 and stage == "02":
            raise runner.StageFailed("stage 02_memory_construction failed (boom)")
        calls.append((cfg.run_name, stage))
        sub = {"01": "data", "02": "memory"}.get(stage)
        if sub:
            (paths.root / sub).mkdir(parents=True, exist_ok=True)
            (paths.root / sub / "table.parquet").write_text(f"{cfg.run_name}:{stage}")
        if stage == "05":
            systems = {s: {"status": "ok", "metrics": {"N@100": {"mean": 0.1, "lo": 0.0, "hi": 0.2}}} for s in cfg.eval_systems}
            write_json(paths.metrics_file("05_eval"), {"systems": systems})
        (paths.notebooks / f"{STAGES[stage]}.ipynb").write_text("{}")
        return 0.01

    monkeypatch.setattr(runner, "execute_stage", execute_stage)
    return calls


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_batch_shares_stages_survives_a_failure_and_reruns_nothing(tmp_path, recorder):
    out = tmp_path / "outputs"
    deltas = tmp_path / "deltas"
    deltas.mkdir()
    base = _write(
        tmp_path / "base.yaml",
        f"run_name: base\noutputs_dir: {out}\n"
        f"eval_recr1_run: abl-recr1\neval_recr1_params: {ROOT / 'params' / 'ablations' / 'recr1.yaml'}\n",
    )
    topk = _write(deltas / "topk_1.yaml", "memory_top_k: 1\neval_systems: [mrrec_sft, mrrec]\n")
    broken = _write(deltas / "broken.yaml", "seed: 13\n")
    recr1 = ROOT / "params" / "ablations" / "recr1.yaml"

    summary = ablate.ablate(base, [topk, broken, recr1])

    by_run: dict[str, list[str]] = {}
    for run, stage in recorder:
        by_run.setdefault(run, []).append(stage)
    assert by_run["base"] == ["01", "02", "03", "04", "05"]
    # Rec-R1: trained (03, 04) as the base run's companion before its stage 05, then only evaluated in the batch.
    assert by_run["abl-recr1"] == ["03", "04", "05"]
    assert recorder.index(("abl-recr1", "04")) < recorder.index(("base", "05"))
    assert by_run["abl-topk_1"] == ["03", "04", "05"]  # data and memory shared with the base run
    assert (out / "abl-topk_1" / "memory" / "table.parquet").read_text() == "base:02"
    assert by_run["abl-broken"] == ["01"]  # failed in stage 02, the batch went on

    status = summary.drop_duplicates("ablation").set_index("ablation")["run_status"].to_dict()
    assert status == {"base": "ok", "topk_1": "ok", "broken": "failed", "recr1": "ok"}
    assert "boom" in summary.loc[summary["ablation"] == "broken", "error"].iloc[0]
    assert set(summary.loc[summary["ablation"] == "recr1", "system"]) == {"recr1"}
    assert (out / "ablations" / "summary.md").exists()
    assert read_json(out / "ablations" / "summary.runs.json")[1]["shared_stages"] == ["01", "02"]

    recorder.clear()
    ablate.ablate(base, [topk, recr1])
    assert recorder == []  # every finished run is current: the second invocation does no work
