"""`mrrec ablate` as a study accumulated across sessions: records, priority, budget, failures, dry runs, costs.

Notebooks and records are faked as in tests/test_ablate_batch.py (no model runs); every fake stage "takes"
MINUTES_PER_STAGE on the study's clock (and records that time), the same as the flat estimate, so the budget
arithmetic below is exact.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_ablate_batch import (
    FAIL_SEED,
    MINUTES_PER_STAGE,
    RECR1,
    ROOT,
    STALE_MARK,
    base_params,
    by_run,
    flat_seconds,
    install_fake_records,
    install_fake_stages,
    write,
)

from mrrec_lib import cli, runner, stages, study, study_cost
from mrrec_lib.config import load_config
from mrrec_lib.runs import read_json, write_json

DELTAS = ROOT / "params" / "ablations"
M = MINUTES_PER_STAGE


@pytest.fixture
def calls(monkeypatch):
    """The fake stages, each advancing the study's wall clock by the seconds it reports; a stage still running at
    the runner's deadline dies there, as `runner.kill_at` kills its kernel."""
    recorded = install_fake_stages(monkeypatch)
    install_fake_records(monkeypatch, recorded)
    now, deadline = [0.0], [math.inf]
    fake = runner.execute_stage

    def timed(stage, cfg, paths, log_output=False):
        seconds = fake(stage, cfg, paths, log_output)
        if now[0] + seconds > deadline[0]:
            now[0] = deadline[0]
            raise RuntimeError("DeadKernelError: Kernel died")
        now[0] += seconds
        return seconds

    @contextmanager
    def kill_at(at):
        deadline[0] = math.inf if at is None else at
        yield lambda: now[0] >= deadline[0]

    clock = SimpleNamespace(monotonic=lambda: now[0], time=lambda: now[0], perf_counter=lambda: now[0])
    monkeypatch.setattr(runner, "execute_stage", timed)
    monkeypatch.setattr(runner, "kill_at", kill_at)
    monkeypatch.setattr(runner, "time", clock)
    monkeypatch.setattr(study, "time", clock)
    return recorded


def _delta(tmp_path: Path, name: str, text: str) -> Path:
    return write(tmp_path / "deltas" / f"{name}.yaml", text)


def _topk(tmp_path: Path, k: int) -> Path:
    return _delta(tmp_path, f"topk_{k}", f"memory_top_k: {k}\neval_systems: [mrrec_sft, mrrec]\n")


def _study(tmp_path: Path, deltas: list[Path], **kw) -> list[study.Ablation]:
    base = kw.pop("base", None) or base_params(tmp_path, companion=False)
    return study.run_study(base, deltas, results_dir=tmp_path / "results", stage_seconds=flat_seconds, **kw)


def _status(abls: list[study.Ablation]) -> dict[str, str]:
    return {a.name: a.status for a in abls}


def test_priority_order_known_deltas_then_unknown_by_name(tmp_path):
    shipped = sorted(DELTAS.glob("*.yaml"), reverse=True)
    extra = [_delta(tmp_path, "zz_mine", "memory_top_k: 7\n"), _delta(tmp_path, "aa_mine", "memory_top_k: 6\n")]
    abls = study.collect(base_params(tmp_path), [*extra, *shipped])
    assert [a.name for a in abls] == ["base", *study.PRIORITY, "aa_mine", "zz_mine"]
    assert study.PRIORITY[-1] == "memory_builder_llm" and sorted(study.PRIORITY) == sorted(p.stem for p in shipped)


def test_runs_in_priority_order(tmp_path, calls):
    deltas = [_topk(tmp_path, 2), _delta(tmp_path, "no_local_memory", "local_memory: false\n"), _topk(tmp_path, 1)]
    _study(tmp_path, deltas)
    first_stage = list(dict.fromkeys(run for run, _ in calls if run != "record"))
    assert first_stage == ["base", "abl-no_local_memory", "abl-topk_1", "abl-topk_2"]


def test_a_current_record_is_skipped_even_without_outputs(tmp_path, calls):
    topk = _topk(tmp_path, 1)
    _study(tmp_path, [topk])
    shutil.rmtree(tmp_path / "outputs")  # a new session: outputs/ is gone, the records stay
    calls.clear()
    abls = _study(tmp_path, [topk])
    assert calls == [] and _status(abls) == {"base": "recorded", "topk_1": "recorded"}
    assert read_json(tmp_path / "results" / "study.json")["minutes_left"] == 0


def test_a_stale_record_is_rerun(tmp_path, calls):
    topk = _topk(tmp_path, 1)
    _study(tmp_path, [topk])
    shutil.rmtree(tmp_path / "outputs")
    (tmp_path / "results" / "abl-topk_1" / STALE_MARK).write_text("")
    calls.clear()
    abls = _study(tmp_path, [topk])
    assert by_run(calls) == {"abl-topk_1": ["01", "02", "03", "04", "05"]}  # no donor left in outputs/
    assert ("record", "abl-topk_1") in calls and _status(abls) == {"base": "recorded", "topk_1": "ran now"}
    assert not (tmp_path / "results" / "abl-topk_1" / STALE_MARK).exists()  # the new record replaced the old


def test_a_record_of_other_params_is_rerun(tmp_path, calls):
    topk = _topk(tmp_path, 1)
    _study(tmp_path, [topk])
    write(topk, "memory_top_k: 1\neval_systems: [mrrec]\n")  # same training, another stage-05 hash
    calls.clear()
    abls = _study(tmp_path, [topk])
    assert by_run(calls) == {"abl-topk_1": ["05"]}  # its own folder's stages 01-04 are still current
    topk_row = next(a for a in abls if a.name == "topk_1")
    assert topk_row.status == "ran now"


def test_budget_stops_before_a_run_that_does_not_fit(tmp_path, calls, capsys):
    deltas = [_topk(tmp_path, k) for k in (1, 2, 4)]
    # base: 5 stages, each delta 03-05: 3 stages. 5 + 3 stages fit in 8.5 stage-times; the next 3 do not.
    abls = _study(tmp_path, deltas, budget_min=8.5 * M)
    assert _status(abls) == {"base": "ran now", "topk_1": "ran now", "topk_2": "left", "topk_4": "left"}
    assert set(by_run(calls)) == {"base", "abl-topk_1"}
    assert "stopping: topk_2 needs ~30 min, 5 min of the budget left" in capsys.readouterr().out
    left = {a.name: (a.stages_left, a.minutes_left) for a in abls}
    assert left["topk_2"] == (("03", "04", "05"), pytest.approx(3 * M)) and left["base"] == ((), 0.0)
    saved = read_json(tmp_path / "results" / "study.json")
    assert saved["minutes_left"] == pytest.approx(6 * M) and saved["budget_min"] == 8.5 * M
    assert [r["status"] for r in saved["ablations"]] == ["ran now", "ran now", "left", "left"]


def test_partial_starts_the_run_that_does_not_fit_pauses_it_and_resumes_it(tmp_path, calls, capsys):
    from mrrec_lib.runs import RunPaths

    topk = [_topk(tmp_path, 1), _topk(tmp_path, 2)]
    # The base's 5 stages fit in 6.5 stage-times; topk_1 (03-05) gets the 1.5 left: 03 finishes, 04 dies halfway.
    abls = _study(tmp_path, topk, budget_min=6.5 * M, partial=True)
    assert _status(abls) == {"base": "ran now", "topk_1": "paused", "topk_2": "left"}  # the queue stops there
    assert "topk_1 needs ~30 min (03,04,05; started for the 15 min left" in capsys.readouterr().out
    run = RunPaths(tmp_path / "outputs" / "abl-topk_1")
    assert set(stages.read_records(run)) == {"01", "02", "03"}
    assert stages.read_paused(run)["04"]["seconds"] == pytest.approx(0.5 * M * 60)
    paused = {a.name: a for a in abls}["topk_1"]
    assert paused.stages_left == ("04", "05") and "paused at the deadline after 5.0 min" in paused.note
    assert read_json(tmp_path / "results" / "study.json")["ablations"][1]["status"] == "paused"
    assert not (tmp_path / "results" / "abl-topk_1").exists()  # nothing recorded, nothing failed

    planned = {a.name: a for a in _study(tmp_path, topk, dry_run=True)}["topk_1"]
    assert planned.status == "left" and planned.note == "stage 04 paused after 5 min, resumes"
    assert planned.minutes_left == pytest.approx(0.5 * M + M)  # 04 less the 5 min it ran, then 05
    calls.clear()
    abls = _study(tmp_path, topk, budget_min=2.5 * M)  # 04 and 05 of topk_1 fit now, topk_2's 30 min do not
    assert _status(abls) == {"base": "recorded", "topk_1": "ran now", "topk_2": "left"}
    assert {a.name: a for a in abls}["topk_1"].note == ""
    assert by_run(calls) == {"abl-topk_1": ["04", "05"]}
    record = stages.read_records(run)["04"]
    assert record["seconds"] == pytest.approx(1.5 * M * 60) and record["paused_seconds"] == pytest.approx(0.5 * M * 60)
    assert stages.read_paused(run) == {}


def test_a_paused_stage_is_priced_less_its_spent_time_under_its_own_hash_only(tmp_path):
    from mrrec_lib.runs import RunPaths

    run = RunPaths(tmp_path / "abl-topk_1")
    run.root.mkdir(parents=True)
    cfg = load_config(base_params(tmp_path, companion=False), _topk(tmp_path, 1))
    stages.record_pause(run, "04", cfg, 0.3 * M * 60)
    write_json(tmp_path / "abl-other" / "paused.json", {"04": {"hash": "not-this-config", "seconds": 60.0}})
    paused = study_cost.paused_stages(tmp_path)
    assert paused == {
        "abl-topk_1": {"04": (stages.stage_hash(cfg, "04"), pytest.approx(0.3 * M * 60), None, None, None, ())},
        "abl-other": {"04": ("not-this-config", 60.0, None, None, None, ())},
    }
    assert study_cost.paused_stages(tmp_path / "missing") == {}

    flat = SimpleNamespace(stage_seconds=lambda files: dict.fromkeys(study_cost.STAGE_ORDER, 600.0))
    job = study_cost.Job("abl-topk_1", (), {s: f"h{s}" for s in ("03", "04", "05")})

    def cost(stage: str, h: str, spent: float, steps: tuple[int, int] | None = None) -> float:
        return study_cost.plan([job], {}, flat, {"abl-topk_1": {stage: study_cost.Paused(h, spent, steps)}})[0].seconds

    assert cost("04", "h04", 180.0) == 1800.0 - 180.0
    assert cost("04", "h04", 900.0) == pytest.approx(1200.0 + 600.0 * study_cost.RESUME_FLOOR)  # overran its price
    assert cost("04", "other", 180.0) == cost("02", "h02", 180.0) == 1800.0  # another config's pause; a reused stage
    assert cost("04", "h04", 900.0, (18, 20)) == pytest.approx(1200.0 + 60.0)  # the checkpoint, not the time, counts


def test_a_paused_evaluation_is_priced_by_the_weighted_rows_each_system_still_lacks(tmp_path):
    from mrrec_lib.runs import RunPaths, append_jsonl

    run = RunPaths(tmp_path / "abl-topk_1")
    logs = run.logs / "05_eval"
    logs.mkdir(parents=True)
    append_jsonl(logs / "query_dense-aaaaaaaaaaaa.jsonl", [{"qid": f"q{i}"} for i in range(10)])
    append_jsonl(logs / "mrrec-bbbbbbbbbbbb.jsonl", [{"qid": f"q{i}"} for i in range(2)])
    older = logs / "mrrec-cccccccccccc.jsonl"  # another fingerprint's log, written before: not this evaluation's
    append_jsonl(older, [{"qid": f"q{i}"} for i in range(9)])
    os.utime(older, (1.0, 1.0))
    assert study_cost.logged_rows(run) == {"query_dense": 10, "mrrec": 2}
    cfg = load_config(base_params(tmp_path, companion=False), _topk(tmp_path, 1))
    stages.record_pause(run, "05", cfg, 1000.0)
    stages.record_pause(run, "04", cfg, 10.0)
    paused = study_cost.paused_stages(tmp_path)["abl-topk_1"]
    assert paused["05"].rows == {"query_dense": 10, "mrrec": 2} and paused["04"].rows is None
    note = study.paused_note(SimpleNamespace(run="abl-topk_1", cfg=cfg), study_cost.paused_stages(tmp_path))
    assert note == "stage 04 paused after 0 min, resumes; stage 05 paused after 17 min with 12 per-request rows logged, resumes"

    # query rows cost 0.01 s, policy rows 1 s: 10 of 10 query rows and 2 of 10 policy rows leave 8 s of 10.1 s
    work = (10, {"query_dense": 0.01, "mrrec": 1.0})
    flat = SimpleNamespace(stage_seconds=lambda files: dict.fromkeys(study_cost.STAGE_ORDER, 600.0),
                           eval_work=lambda files: work)
    job = study_cost.Job("abl-topk_1", (), {"05": "h05"})
    resumed = study_cost.plan([job], {}, flat, {"abl-topk_1": {"05": paused["05"]._replace(hash="h05")}})[0]
    assert resumed.seconds == pytest.approx(600.0 * 8.0 / 10.1)  # not 600 - 1000 s spent, floored at 300
    assert study_cost.resumed_seconds(600.0, paused["05"], (10, {"mrrec": 0.0})) == 300.0  # no weight: time floor
    assert study_cost.resumed_seconds(600.0, paused["05"]) == 300.0


def test_a_paused_evaluation_prices_its_rest_at_the_speed_its_logged_rows_took(tmp_path):
    """A policy that writes longer answers than the records' median pays for them in the rows it still lacks."""
    from mrrec_lib.runs import RunPaths, append_jsonl

    run = RunPaths(tmp_path / "abl-grpo_seed_2")
    logs = run.logs / "05_eval"
    logs.mkdir(parents=True)
    append_jsonl(logs / "mrrec-aaaaaaaaaaaa.jsonl", [{"qid": f"q{i}", "latency_s": 1.0 + i % 2} for i in range(4)])
    append_jsonl(logs / "query_dense-bbbbbbbbbbbb.jsonl", [{"qid": "q0"}])  # no latency logged: the estimate prices it
    assert study_cost.logged_latency(run) == {"mrrec": 1.5}

    paused = study_cost.Paused("h05", 100.0, None, study_cost.logged_rows(run), study_cost.logged_latency(run))
    # estimated 1 s per policy row and 0.5 s per query row: 6 policy rows left at 1.5 s, 9 query rows at 0.5 s
    work = (10, {"mrrec": 1.0, "query_dense": 0.5})
    assert study_cost.resumed_seconds(600.0, paused, work) == pytest.approx(600.0 * (6 * 1.5 + 9 * 0.5) / 15.0)
    assert study_cost.resumed_seconds(600.0, paused._replace(latency=None), work) == pytest.approx(
        600.0 * (6 * 1.0 + 9 * 0.5) / 15.0
    )


def test_an_unstarted_grpo_evaluation_is_priced_at_its_sft_starts_logged_speed(tmp_path):
    """The GRPO policy is scored after its SFT start, from which a few steps barely move answer length."""
    from mrrec_lib.runs import RunPaths, append_jsonl

    run = RunPaths(tmp_path / "abl-local_patterns_only")
    (run.logs / "05_eval").mkdir(parents=True)
    append_jsonl(run.logs / "05_eval/mrrec_sft-aaaaaaaaaaaa.jsonl", [{"qid": f"q{i}", "latency_s": 6.0} for i in range(6)])
    paused = study_cost.Paused("h05", 100.0, None, study_cost.logged_rows(run), study_cost.logged_latency(run))
    work = (10, {"mrrec_sft": 6.0, "mrrec": 4.0})  # the estimate prices the GRPO rows at the records' median
    assert study_cost.resumed_seconds(600.0, paused, work) == pytest.approx(600.0 * (4 * 6.0 + 10 * 6.0) / 100.0)
    append_jsonl(run.logs / "05_eval/mrrec-bbbbbbbbbbbb.jsonl", [{"qid": "q0", "latency_s": 5.0}])
    paused = paused._replace(rows=study_cost.logged_rows(run), latency=study_cost.logged_latency(run))
    assert study_cost.resumed_seconds(600.0, paused, work) == pytest.approx(600.0 * (4 * 6.0 + 9 * 5.0) / 100.0)


def test_a_paused_evaluation_whose_grpo_kept_its_sft_start_prices_no_grpo_rows(tmp_path):
    """Stage 05 reuses the SFT policy's answers for a GRPO policy that published step 0, so they cost nothing."""
    from mrrec_lib.runs import RunPaths, append_jsonl
    from mrrec_lib.train.checkpoints import POLICY_META, final_dir

    run = RunPaths(tmp_path / "abl-local_records_only")
    (run.logs / "05_eval").mkdir(parents=True)
    append_jsonl(run.logs / "05_eval/mrrec_sft-aaaaaaaaaaaa.jsonl", [{"qid": f"q{i}", "latency_s": 6.0} for i in range(6)])
    meta = final_dir(run, "grpo") / POLICY_META
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"base": {"which": "sft"}, "best_step": 4}))
    assert study_cost.reused_systems(run) == ()
    meta.write_text(json.dumps({"base": {"which": "sft"}, "best_step": 0}))
    assert study_cost.reused_systems(run) == ("mrrec",)
    stages.record_pause(run, "05", load_config(base_params(tmp_path, companion=False)), 100.0)
    paused = study_cost.paused_stages(tmp_path)["abl-local_records_only"]["05"]
    assert paused.reused == ("mrrec",)
    work = (10, {"mrrec_sft": 6.0, "mrrec": 4.0})
    assert study_cost.resumed_seconds(600.0, paused, work) == pytest.approx(600.0 * 4 * 6.0 / 100.0)


def test_a_paused_training_stage_reports_its_newest_complete_checkpoint(tmp_path):
    from mrrec_lib.runs import RunPaths
    from mrrec_lib.train.checkpoints import checkpoints_dir

    run = RunPaths(tmp_path / "abl-topk_1")
    assert study_cost.checkpoint_steps(run, "04") is None  # no models folder at all
    for step in (5, 15, 10):
        write_json(checkpoints_dir(run, "grpo") / f"checkpoint-{step}" / "trainer_state.json",
                   {"global_step": step, "max_steps": 20})
    (checkpoints_dir(run, "grpo") / "checkpoint-18").mkdir()  # a save cut short: dropped on resume, not counted
    (checkpoints_dir(run, "grpo") / "checkpoint-19").mkdir()
    (checkpoints_dir(run, "grpo") / "checkpoint-19" / "trainer_state.json").write_text('{"global_step": 19, "max')
    write_json(checkpoints_dir(run, "sft") / "checkpoint-36" / "trainer_state.json", {"global_step": 36, "max_steps": 36})
    assert study_cost.checkpoint_steps(run, "04") == (15, 20)
    assert study_cost.checkpoint_steps(run, "03") == (36, 36)
    assert study_cost.checkpoint_steps(run, "05") is None  # evaluation resumes from parts files, not a trainer

    cfg = load_config(base_params(tmp_path, companion=False), _topk(tmp_path, 1))
    stages.record_pause(run, "04", cfg, 0.3 * M * 60)
    assert study_cost.paused_stages(tmp_path)["abl-topk_1"]["04"].steps == (15, 20)
    ab = SimpleNamespace(run="abl-topk_1", cfg=cfg)
    assert study.paused_note(ab, study_cost.paused_stages(tmp_path)) == (
        f"stage 04 paused after {0.3 * M:.0f} min at step 15 of 20, resumes")


def test_partial_does_not_start_a_run_in_the_last_minutes(tmp_path, calls, capsys):
    abls = _study(tmp_path, [_topk(tmp_path, 1)], budget_min=5.5 * M, partial=True)
    assert _status(abls) == {"base": "ran now", "topk_1": "left"} and "stopping: topk_1" in capsys.readouterr().out


def test_nothing_starts_when_the_first_run_does_not_fit(tmp_path, calls, capsys):
    abls = _study(tmp_path, [_topk(tmp_path, 1)], budget_min=4 * M)
    assert calls == [] and _status(abls) == {"base": "left", "topk_1": "left"}
    assert "nothing started: base needs ~50 min, 40 min of the budget left" in capsys.readouterr().out
    assert read_json(tmp_path / "results" / "study.json")["minutes_left"] == pytest.approx(8 * M)


def test_a_failure_is_recorded_and_the_study_goes_on(tmp_path, calls):
    broken = _delta(tmp_path, "no_global_memory", f"seed: {FAIL_SEED}\n")  # runs early, fails in stage 02
    topk = _topk(tmp_path, 1)
    abls = _study(tmp_path, [broken, topk])
    assert _status(abls) == {"base": "ran now", "no_global_memory": "failed", "topk_1": "ran now"}
    failed = read_json(tmp_path / "results" / "abl-no_global_memory" / "failed.json")
    cfg = load_config(tmp_path / "base.yaml", broken, overrides={"run_name": "abl-no_global_memory"})
    assert failed["stage"] == "02" and "boom" in failed["error"] and failed["failed_at"]
    assert failed["hashes"] == {s: stages.stage_hash(cfg, s) for s in ("01", "05")}

    calls.clear()
    assert _status(_study(tmp_path, [broken, topk]))["no_global_memory"] == "failed" and calls == []
    _study(tmp_path, [broken, topk], retry_failed=True)
    assert by_run(calls) == {"abl-no_global_memory": ["02!"]}  # retried (stage 01 still current)
    calls.clear()
    write(broken, f"seed: {FAIL_SEED}\nmemory_top_k: 2\n")  # other params: retried without being asked
    _study(tmp_path, [broken, topk])
    assert by_run(calls) == {"abl-no_global_memory": ["02!"]}


def test_a_run_that_cannot_be_recorded_counts_as_failed(tmp_path, calls, monkeypatch):
    install_fake_records(monkeypatch, calls, refuse="abl-topk_1")
    abls = _study(tmp_path, [_topk(tmp_path, 1), _topk(tmp_path, 2)])
    assert _status(abls) == {"base": "ran now", "topk_1": "failed", "topk_2": "ran now"}
    failed = read_json(tmp_path / "results" / "abl-topk_1" / "failed.json")
    assert failed["stage"] == "record" and "Table 1 recomputation differs" in failed["error"]


def test_dry_run_runs_nothing_and_writes_the_plan(tmp_path, calls, capsys):
    abls = _study(tmp_path, [_topk(tmp_path, 1), RECR1], base=base_params(tmp_path), dry_run=True)
    assert calls == [] and not (tmp_path / "outputs" / "ablations").exists()
    assert all(a.status == "left" for a in abls)
    left = {a.name: a.stages_left for a in abls}
    # The base's stage 05 trains the Rec-R1 companion (03, 04 on the base's data); recr1 then only evaluates.
    assert left == {"base": ("01", "02", "03", "04", "05", "abl-recr1:03", "abl-recr1:04"), "recr1": ("05",),
                    "topk_1": ("03", "04", "05")}  # fmt: skip
    saved = read_json(tmp_path / "results" / "study.json")
    assert saved["dry_run"] is True and saved["minutes_left"] == pytest.approx((7 + 1 + 3) * M)
    assert [r["ablation"] for r in saved["ablations"]] == ["base", "recr1", "topk_1"]
    out = capsys.readouterr().out
    assert "total left" in out and "recr1" in out


def test_cli_ablate_dry_run(tmp_path, calls, monkeypatch, capsys):
    monkeypatch.setattr(study, "estimated_seconds", flat_seconds)
    base = base_params(tmp_path, companion=False)
    args = ["ablate", str(base), str(_topk(tmp_path, 1)), "--dry-run", "--budget-min", "60"]
    assert cli.main([*args, "--results-dir", str(tmp_path / "results")]) == 0
    assert calls == [] and "total left" in capsys.readouterr().out
    assert read_json(tmp_path / "results" / "study.json")["budget_min"] == 60


def test_calibration_prices_shared_work_by_the_measurement_and_extra_work_by_the_benchmarks():
    assert study_cost.calibrate(100.0, 100.0, None) == 100.0  # nothing measured: the raw estimate
    assert study_cost.calibrate(100.0, 100.0, 30.0) == 30.0  # same work as the base: its measured time
    assert study_cost.calibrate(25.0, 100.0, 30.0) == pytest.approx(7.5)  # a quarter of the work
    assert study_cost.calibrate(500.0, 100.0, 30.0) == pytest.approx(430.0)  # the base's part + 400 s extra
    assert study_cost.calibrate(50.0, 0.0, 30.0) == 50.0  # a stage the base does not do


def test_measured_base_times_calibrate_the_plan(tmp_path, calls):
    deltas = [_topk(tmp_path, 1)]
    _study(tmp_path, deltas)  # the fake stages record M minutes each
    for folder in ("results", "outputs"):  # topk_1 is then seeded from the base run again
        shutil.rmtree(tmp_path / folder / "abl-topk_1")
    stages_file = tmp_path / "outputs" / "base" / "stages.json"
    records = read_json(stages_file)
    records["04"]["seconds"] = 3 * M * 60  # the base's GRPO took three times the estimate
    write_json(stages_file, records)
    shutil.rmtree(tmp_path / "results" / "base")  # the run folder is then the measurement's source
    abls = _study(tmp_path, deltas, dry_run=True)
    topk = next(a for a in abls if a.name == "topk_1")
    assert topk.stages_left == ("03", "04", "05") and topk.minutes_left == pytest.approx(5 * M)
    records["04"]["hash"] = "f" * 16  # measured with other params: it no longer prices the plan
    write_json(stages_file, records)
    topk = next(a for a in _study(tmp_path, deltas, dry_run=True) if a.name == "topk_1")
    assert topk.minutes_left == pytest.approx(3 * M)


def test_a_scale_overlay_runs_the_same_study_at_another_size(tmp_path, calls):
    """The overlay goes last (its budget keys win over a delta's), names follow the manual recipes' pattern, and
    the scaled study keeps its own plan file and records beside the full-size study's."""
    scale = write(tmp_path / "eval" / "grpo_probe.yaml", "grpo_max_steps: 20\neval_systems: [query_dense, mrrec]\n")
    topk = _topk(tmp_path, 1)
    abls = _study(tmp_path, [topk], scale=scale)
    assert [(a.name, a.run, a.status) for a in abls] == [("base", "base-grpo-probe", "ran now"),
                                                         ("topk_1", "grpo-probe-topk_1", "ran now")]  # fmt: skip
    assert abls[1].cfg.eval_systems == ["query_dense", "mrrec"] and abls[1].cfg.memory_top_k == 1
    assert abls[1].cfg.grpo_max_steps == 20
    assert by_run(calls)["grpo-probe-topk_1"] == ["03", "04", "05"]  # data and memory shared with the base
    saved = read_json(tmp_path / "results" / "study-grpo-probe.json")
    assert saved["scale"].endswith("grpo_probe.yaml") and saved["minutes_left"] == 0
    assert not (tmp_path / "results" / "study.json").exists()
    calls.clear()
    assert _status(_study(tmp_path, [topk], scale=scale)) == {"base": "recorded", "topk_1": "recorded"}
    assert calls == []
    # The full-size study does not take the scaled records for its own.
    assert _status(_study(tmp_path, [topk], dry_run=True)) == {"base": "left", "topk_1": "left"}


def test_stage05_rows_of_a_paused_run_survive_a_lost_outputs_folder(tmp_path, calls, monkeypatch, capsys):
    """A session pauses the base run in stage 05; the next starts with no outputs/ and resumes from the saved rows."""
    from mrrec_lib.runs import append_jsonl, read_jsonl

    timed, seen = runner.execute_stage, []

    def evaluating(stage, cfg, paths, log_output=False):
        if stage == "05":  # each attempt evaluates two more requests, resuming from the cache it finds
            cache = paths.logs / "05_eval" / "mrrec-abc.jsonl"
            have = len(read_jsonl(cache))
            seen.append(have)
            append_jsonl(cache, [{"qid": f"q{i}"} for i in range(have, have + 2)])
        return timed(stage, cfg, paths, log_output)

    monkeypatch.setattr(runner, "execute_stage", evaluating)
    abls = _study(tmp_path, [], budget_min=4.5 * M, partial=True)
    assert _status(abls) == {"base": "paused"}
    assert "stage-05 rows kept in results/partial/base: mrrec-abc 2" in capsys.readouterr().out.replace(
        str(tmp_path) + "/", ""
    )
    shutil.rmtree(tmp_path / "outputs")
    planned = _study(tmp_path, [], dry_run=True)[0]
    assert "2 stage-05 rows of 1 system caches kept in results/partial" in planned.note
    abls = _study(tmp_path, [])
    assert _status(abls) == {"base": "ran now"} and seen == [0, 2]
    assert not (tmp_path / "results" / "partial").exists()
