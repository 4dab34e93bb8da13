"""The ablation study end to end, with notebooks replaced by a recorder and records by a copy (no model runs).

What is checked is the orchestration `mrrec ablate` promises: upstream stages shared with another run are
not rerun, a failing configuration does not stop the study, the Rec-R1 companion is trained once before the
base run's evaluation, every finished run is recorded at once, and a second invocation does no work.
The fakes here are shared with tests/test_study.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mrrec_lib import runner, study
from mrrec_lib.results.record import StaleRecordError
from mrrec_lib.runs import STAGES, RunPaths, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
RECR1 = ROOT / "params" / "ablations" / "recr1.yaml"
FAIL_SEED = 13  # a delta with this seed fails in stage 02
STALE_MARK = "STALE"  # a record folder holding this file is reported stale by the fake check_record
MINUTES_PER_STAGE = 10.0


def install_fake_stages(monkeypatch) -> list[tuple[str, str]]:
    """Replaces papermill: records (run, stage) — (run, "02!") for the failing one — and writes what later stages read."""
    calls: list[tuple[str, str]] = []

    def execute_stage(stage, cfg, paths: RunPaths, log_output=False):
        if cfg.seed == FAIL_SEED and stage == "02":
            calls.append((cfg.run_name, "02!"))
            raise runner.StageFailed("stage 02_memory_construction failed (boom)")
        calls.append((cfg.run_name, stage))
        sub = {"01": "data", "02": "memory"}.get(stage)
        if sub:
            (paths.root / sub).mkdir(parents=True, exist_ok=True)
            (paths.root / sub / "table.parquet").write_text(f"{cfg.run_name}:{stage}")
        if stage == "05":
            systems = {
                s: {"status": "ok", "metrics": {"N@100": {"mean": 0.1, "lo": 0.0, "hi": 0.2}}} for s in cfg.eval_systems
            }
            write_json(paths.metrics_file("05_eval"), {"systems": systems})
        (paths.notebooks / f"{STAGES[stage]}.ipynb").write_text("{}")
        return MINUTES_PER_STAGE * 60  # recorded as the stage's time: the estimates' calibration is then the identity

    monkeypatch.setattr(runner, "execute_stage", execute_stage)
    return calls


def install_fake_records(monkeypatch, calls: list, refuse: str | None = None) -> None:
    """record_run copies what `check_record` and the summary read (and logs ("record", run)); run `refuse` fails."""

    def record_run(run_dir, results_dir, command=None):
        run_dir = Path(run_dir)
        if run_dir.name == refuse:
            raise StaleRecordError(f"not recording {run_dir}: Table 1 recomputation differs")
        calls.append(("record", run_dir.name))
        dest = Path(results_dir) / run_dir.name
        shutil.rmtree(dest, ignore_errors=True)  # like the real one: the new record replaces the folder
        for name in ("config.yaml", "stages.json", "metrics/05_eval.json"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / name, dest / name)
        return dest

    def check_record(folder):
        return ["stale: test mark"] if (Path(folder) / STALE_MARK).exists() else []

    monkeypatch.setattr(study, "record_run", record_run)
    monkeypatch.setattr(study, "check_record", check_record)


def flat_seconds(files) -> dict[str, float]:
    return {s: MINUTES_PER_STAGE * 60 for s in ("01", "02", "03", "04", "05")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def base_params(tmp_path: Path, companion: bool = True) -> Path:
    text = f"run_name: base\noutputs_dir: {tmp_path / 'outputs'}\n"
    if companion:
        text += f"eval_recr1_run: abl-recr1\neval_recr1_params: {RECR1}\n"
    return write(tmp_path / "base.yaml", text)


@pytest.fixture
def recorder(monkeypatch):
    calls = install_fake_stages(monkeypatch)
    install_fake_records(monkeypatch, calls)
    return calls


def by_run(calls: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for run, stage in calls:
        if run != "record":
            out.setdefault(run, []).append(stage)
    return out


def test_batch_shares_stages_survives_a_failure_and_reruns_nothing(tmp_path, recorder):
    out, results = tmp_path / "outputs", tmp_path / "results"
    base = base_params(tmp_path)
    topk = write(tmp_path / "deltas" / "topk_1.yaml", "memory_top_k: 1\neval_systems: [mrrec_sft, mrrec]\n")
    broken = write(tmp_path / "deltas" / "broken.yaml", f"seed: {FAIL_SEED}\n")

    abls = study.run_study(base, [broken, topk, RECR1], results_dir=results, stage_seconds=flat_seconds)

    assert [a.name for a in abls] == ["base", "recr1", "topk_1", "broken"]  # priority, unknown deltas last
    runs = by_run(recorder)
    assert runs["base"] == ["01", "02", "03", "04", "05"]
    # Rec-R1: trained (03, 04) as the base run's companion before its stage 05, then only evaluated in the study.
    assert runs["abl-recr1"] == ["03", "04", "05"]
    assert recorder.index(("abl-recr1", "04")) < recorder.index(("base", "05"))
    assert runs["abl-topk_1"] == ["03", "04", "05"]  # data and memory shared with the base run
    assert (out / "abl-topk_1" / "memory" / "table.parquet").read_text() == "base:02"
    assert runs["abl-broken"] == ["01", "02!"]  # failed in stage 02, the study went on
    # Each run is recorded as soon as it finishes, before the next one starts.
    assert recorder.index(("record", "base")) < recorder.index(("abl-topk_1", "03"))
    assert {a.name: a.status for a in abls} == {
        "base": "ran now",
        "recr1": "ran now",
        "topk_1": "ran now",
        "broken": "failed",
    }
    failed = read_json(results / "abl-broken" / "failed.json")
    assert failed["stage"] == "02" and "boom" in failed["error"] and set(failed["hashes"]) == {"01", "05"}

    summary = pd.read_csv(out / "ablations" / "summary.csv")
    status = summary.drop_duplicates("ablation").set_index("ablation")["run_status"].to_dict()
    assert status == {"base": "ok", "recr1": "ok", "topk_1": "ok", "broken": "failed"}
    assert "boom" in summary.loc[summary["ablation"] == "broken", "error"].iloc[0]
    assert set(summary.loc[summary["ablation"] == "recr1", "system"]) == {"recr1"}
    assert read_json(out / "ablations" / "summary.runs.json")[2]["shared_stages"] == ["01", "02"]

    recorder.clear()
    again = study.run_study(base, [topk, RECR1, broken], results_dir=results, stage_seconds=flat_seconds)
    assert recorder == []  # every run is recorded (or failed with the same params): no work
    assert [a.status for a in again] == ["recorded", "recorded", "recorded", "failed"]


def test_cli_run_share_links_the_matching_stages_of_another_run(tmp_path, monkeypatch, capsys):
    """`mrrec run --share`: a delta run starts from another run's finished stages with equal hashes."""
    from mrrec_lib import stages
    from mrrec_lib.cli import main
    from mrrec_lib.config import load_config

    outputs = tmp_path / "outputs"
    params = tmp_path / "p.yaml"
    params.write_text(f"outputs_dir: {outputs}\nmax_users: 3\n")
    cfg = load_config(params, overrides={"run_name": "donor"})
    donor = RunPaths(outputs / "donor")
    (donor.root / "data").mkdir(parents=True)
    (donor.root / "data" / "items.parquet").write_bytes(b"x")
    write_json(donor.root / "stages.json", {"01": {"hash": stages.stage_hash(cfg, "01"), "seconds": 1.0}})
    calls = []
    monkeypatch.setattr(runner, "run", lambda files, **kw: calls.append(kw) or RunPaths(outputs / "delta"))

    assert main(["run", str(params), "--run-name", "delta", "--only", "05", "-p", "eval_max_queries=5", "--share"]) == 0
    assert "shared from donor: stages 01" in capsys.readouterr().out
    assert (outputs / "delta" / "data" / "items.parquet").stat().st_ino == (
        donor.root / "data" / "items.parquet"
    ).stat().st_ino
    assert list(stages.read_records(RunPaths(outputs / "delta"))) == ["01"]
    assert calls[0]["only"] == "05"

    assert main(["run", str(params), "--run-name", "fresh", "--only", "05", "-p", "max_users=4"]) == 0
    assert not (outputs / "fresh" / "data").exists()  # without --share nothing is linked
