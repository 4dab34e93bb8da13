"""Durable results: a fake run folder made by the real stage-05 code (fake retrievers and LLM, no model), recorded
into results/<run>/, Table 1 recomputed from the per-request rows alone, README rendering, refusals, staleness."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_eval import _ctx, _fixed_runner, _queries

from mrrec_lib import stages
from mrrec_lib.cli import main
from mrrec_lib.config import load_config, save_config
from mrrec_lib.eval import report
from mrrec_lib.eval.evaluate import evaluate_systems, metric_names
from mrrec_lib.results import (
    END,
    START,
    StaleRecordError,
    check_record,
    recompute_table,
    record_run,
    render_readme,
    verify_record,
)
from mrrec_lib.results.layout import read_per_query
from mrrec_lib.runs import MissingStageError, RunPaths, read_json, write_json

ROOT_RESULTS = Path(__file__).resolve().parents[1] / "results"
SYSTEMS = ["query_dense", "query_bm25", "zeroshot_none", "recr1", "mrrec_sft", "mrrec"]
TEXT_COLUMNS = {"query", "profile", "raw", "final_text", "text", "text_alt", "memory_text", "top_items"}


def _fake_run(tmp_path, **cfg_kw) -> RunPaths:
    """A run folder as `mrrec run` leaves it after stage 05: config.yaml, stages.json, metrics and per-query rows.

    recr1 has no checkpoint (a "not run" row), zeroshot_none has malformed answers, mrrec finds some targets,
    names an earlier item on others (kept vs excluded ranks differ) and misses the rest.
    """
    queries = _queries().assign(title_overlap=lambda d: d.index % 3)
    ctx, _ = _ctx(tmp_path, queries=queries, **cfg_kw)
    texts = {"q00": "hit", "q01": "hit", "q02": "i30", "q05": "i32 5", "q06": "hit", "q09": "item 9"}
    runners = {"mrrec": _fixed_runner(texts), "mrrec_sft": _fixed_runner({"q00": "hit", "q03": "hit"})}
    res = evaluate_systems(ctx.cfg, ctx.paths, SYSTEMS, context=ctx, runners=runners, progress=False)
    rep = report.build_report(res)
    report.write_report(rep, res, ctx.paths)
    write_json(ctx.paths.metrics_file("05_eval"), {**rep.metrics, "reused": res.reused})
    write_json(ctx.paths.metrics_file("01_data"), {"n_queries": 20})
    save_config(ctx.cfg, ctx.paths.config_file)
    for s in ("01", "02", "03", "04", "05"):
        stages.record_stage(ctx.paths, s, ctx.cfg, 1.0)
    return ctx.paths


@pytest.fixture
def run(tmp_path) -> RunPaths:
    return _fake_run(tmp_path)


def _assert_matches_metrics(table: pd.DataFrame, metrics: dict) -> None:
    """Means, n and cost columns equal to stage 05's record, CI bounds within 1e-9."""
    systems = metrics["systems"]
    assert table["system"].tolist() == list(systems)
    for r in table.to_dict("records"):
        rec = systems[r["system"]]
        assert r["status"] == rec["status"]
        if rec["status"] != "ok":
            assert r["reason"] == rec["reason"]
            continue
        assert (r["n"], r["n_users"]) == (rec["n"], rec["n_users"])
        for m in metric_names(metrics["ks"]):
            assert r[m] == rec["metrics"][m]["mean"]
            assert r[f"{m}_lo"] == pytest.approx(rec["metrics"][m]["lo"], abs=1e-9)
            assert r[f"{m}_hi"] == pytest.approx(rec["metrics"][m]["hi"], abs=1e-9)
        for c in report.COST_COLUMNS:
            want = rec["metrics"][c]
            assert (want is None and math.isnan(r[c])) or r[c] == want


def test_record_recomputes_table1_from_the_per_request_rows(run, tmp_path):
    dest = record_run(run.root, tmp_path / "results")
    assert dest == tmp_path / "results" / "r"
    names = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert {"config.yaml", "stages.json", "record.json", "per_query.csv.gz", "metrics/05_eval.json"} <= names
    assert {"metrics/01_data.json", "metrics/05_table1.md", "metrics/05_table1.csv"} <= names
    assert not any(n.endswith(".parquet") or n.startswith(".") for n in names)
    table = recompute_table(dest)
    metrics = read_json(dest / "metrics" / "05_eval.json")
    _assert_matches_metrics(table, metrics)
    assert table.set_index("system").loc["recr1", "status"] == report.NOT_RUN
    assert table.set_index("system").loc["zeroshot_none", "malformed_rate"] > 0
    assert verify_record(dest) == [] and check_record(dest) == []


def test_per_query_file_is_compact_exact_and_deterministic(run, tmp_path):
    dest = record_run(run.root, tmp_path / "results")
    rows = read_per_query(dest)
    source = pd.read_parquet(run.metrics / "05_per_query.parquet")
    assert not TEXT_COLUMNS & set(rows.columns)
    assert {"rank", "rank_keep", "rank_excl_alt", "N@1000", "malformed", "tool_calls", "title_overlap"} <= set(rows)
    pd.testing.assert_frame_equal(rows, source[rows.columns], check_dtype=False)
    assert rows["rank"].map(math.isinf).any()  # "nothing retrieved" survives the CSV round trip
    # why each malformed answer failed is kept as a short reason; a parsed answer (or a non-LLM row) has ""
    reasons = rows.groupby(rows["malformed"].astype(bool))["parse_error"].agg(lambda s: set(s.str.len() > 0))
    assert reasons[True] == {True} and reasons[False] == {False}
    rec = read_json(dest / "record.json")
    assert rec["per_query"]["rows"] == len(source) and rec["per_query"]["missing_columns"] == []
    first = (dest / "per_query.csv.gz").read_bytes()
    assert gzip.decompress(first).startswith(b"system,qid,user_id,category,target_item_id,rank,")
    again = record_run(run.root, tmp_path / "results")
    assert (again / "per_query.csv.gz").read_bytes() == first  # re-recording an unchanged run: no diff
    # ... and it keeps the first record's provenance (when, at which commit, on what load), noting the re-record
    rerec = read_json(again / "record.json")
    assert {k: rerec[k] for k in ("recorded_at", "git", "machine")} == {k: rec[k] for k in ("recorded_at", "git", "machine")}
    assert rerec["re_recorded"]["at"] >= rec["recorded_at"] and "re_recorded" not in rec


def test_record_json_provenance(run, tmp_path):
    dest = record_run(run.root, tmp_path / "results", command="mrrec run params/x.yaml --record")
    rec = read_json(dest / "record.json")
    run_cfg = load_config(run.config_file)
    assert rec["run"] == "r" and rec["run_command"] == "mrrec run params/x.yaml --record"
    assert set(rec["machine"]) >= {"cpu_count", "torch_threads", "load_average", "cpu_model"} and rec["machine"]["cpu_model"]
    assert len(rec["machine"]["load_average"]) == 3
    assert rec["git"] is None or {"commit", "dirty"} <= set(rec["git"])
    for s in ("01", "02", "03", "04", "05"):
        assert rec["stages"][s]["hash"] == rec["stages"][s]["hash_at_record"] == stages.stage_hash(run_cfg, s)
    assert rec["key_stages"]["grpo_lr"] == "04" and rec["key_stages"]["run_name"] == "ignored"
    assert rec["problems_at_record"] == []
    written = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and p.name != "record.json"}
    assert set(rec["files"]) == written


def test_older_runs_without_setting_columns_still_recompute(tmp_path):
    run = _fake_run(tmp_path)
    pq = run.metrics / "05_per_query.parquet"
    old = pd.read_parquet(pq).drop(columns=["rank_keep", "rank_excl", "rank_keep_alt", "rank_excl_alt", "tool_calls"])
    old.to_parquet(pq, index=False)
    dest = record_run(run.root, tmp_path / "results")
    missing = read_json(dest / "record.json")["per_query"]["missing_columns"]
    assert missing == ["rank_keep", "rank_excl", "rank_keep_alt", "rank_excl_alt", "tool_calls"]
    assert verify_record(dest) == [] and "tool_calls" not in recompute_table(dest)


def test_headline_from_the_recorded_setting(tmp_path):
    run = _fake_run(tmp_path, eval_malformed="raw_text", eval_exclude_history=False)
    dest = record_run(run.root, tmp_path / "results")
    _assert_matches_metrics(recompute_table(dest), read_json(dest / "metrics" / "05_eval.json"))


def _readme(path, body="old table"):
    path.write_text(f"# Title\n\nintro\n\n{START}\n{body}\n{END}\n\nafter\n")
    return path


def test_readme_table_between_markers(run, tmp_path):
    results = tmp_path / "results"
    record_run(run.root, results)
    readme = _readme(tmp_path / "README.md")
    assert render_readme(readme, results, "r") == []
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n" + START + "\n") and text.endswith(END + "\n\nafter\n")
    assert "old table" not in text
    block = text.split(START)[1].split(END)[0]
    assert "10 test requests from 4 users" in block and "malformed answers score 0, earlier items excluded" in block
    assert "`mrrec readme --run r`" in block and "[`results/r/`](results/r/)" in block
    assert "Reproduce: `mrrec run" in block and "`recr1` not run:" in block
    mrrec = read_json(run.metrics_file("05_eval"))["systems"]["mrrec"]
    n100 = mrrec["metrics"]["N@100"]
    cell = "{:.3f} [{:.3f}, {:.3f}]".format(n100["mean"], n100["lo"], n100["hi"])
    row = next(line for line in block.splitlines() if line.startswith(f"| {mrrec['method']} |"))
    assert cell in row
    header = next(line for line in block.splitlines() if line.startswith("| System"))
    assert all(m in header for m in ("R@10", "R@100", "R@1000", "N@10", "N@100", "N@1000", "Malformed"))
    render_readme(readme, results, "r")
    assert readme.read_text() == text  # deterministic: re-rendering an unchanged record changes nothing


def test_readme_without_markers_is_an_error(run, tmp_path):
    record_run(run.root, tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results:table1:start.*results:table1:end"):
        render_readme(readme, tmp_path / "results", "r")
    with pytest.raises(FileNotFoundError, match="mrrec record"):
        render_readme(_readme(readme), tmp_path / "results", "other")


def test_refuses_missing_run_or_stage_outputs(run, tmp_path):
    with pytest.raises(MissingStageError, match="does not exist"):
        record_run(tmp_path / "nope", tmp_path / "results")
    (run.metrics / "05_per_query.parquet").unlink()
    with pytest.raises(MissingStageError, match="05_per_query.parquet.*05_evaluation"):
        record_run(run.root, tmp_path / "results")
    run.metrics_file("05_eval").unlink()
    with pytest.raises(MissingStageError, match="05_eval.json.*05_evaluation"):
        record_run(run.root, tmp_path / "results")
    (run.root / "stages.json").unlink()
    with pytest.raises(MissingStageError, match="stages.json.*mrrec run"):
        record_run(run.root, tmp_path / "results")
    assert not (tmp_path / "results" / "r").exists() and not list((tmp_path / "results").glob(".*"))


def test_refuses_a_run_whose_config_changed_after_stage_05(run, tmp_path):
    save_config(load_config(run.config_file, overrides={"bootstrap_samples": 300}), run.config_file)
    with pytest.raises(StaleRecordError, match="stage 05_evaluation ran with config hash"):
        record_run(run.root, tmp_path / "results")
    assert not (tmp_path / "results" / "r").exists()
    dest = record_run(run.root, tmp_path / "results", allow_stale=True)
    problems = check_record(dest)
    assert any(p.startswith("recorded with a known problem: stage 05_evaluation") for p in problems)
    assert any("Table 1 recomputation" in p and "lo" in p for p in problems)  # 300 draws are not stage 05's 200


def test_staleness_after_a_key_changes_stage(run, tmp_path, monkeypatch):
    dest = record_run(run.root, tmp_path / "results")
    assert check_record(dest) == []
    monkeypatch.setattr(stages, "IGNORED_KEYS", stages.IGNORED_KEYS | {"max_users"})
    problems = check_record(dest)
    assert len(problems) == 5 and all(p.startswith("stale: stage ") for p in problems)
    assert "no longer hashed: max_users" in problems[0] and "`mrrec run` would rerun it" in problems[0]
    readme = _readme(tmp_path / "README.md")
    assert render_readme(readme, tmp_path / "results", "r") == problems
    assert "**Stale record**" in readme.read_text() and "(and 4 more)" in readme.read_text()


def test_staleness_names_only_the_stages_a_moved_key_hashes(run, tmp_path, monkeypatch):
    dest = record_run(run.root, tmp_path / "results")
    monkeypatch.setattr(stages, "_PREFIX_STAGE", (("naive_memory_n", "06"), *stages._PREFIX_STAGE))
    problems = check_record(dest)
    assert len(problems) == 1 and problems[0].startswith("stale: stage 05_evaluation ran with config hash")
    assert "no longer hashed: naive_memory_n" in problems[0]


def test_hand_edits_and_changed_hashes_are_reported(run, tmp_path):
    dest = record_run(run.root, tmp_path / "results")
    records = json.loads((dest / "stages.json").read_text())
    records["03"]["hash"] = "0" * 16
    (dest / "stages.json").write_text(json.dumps(records))
    problems = check_record(dest)
    assert problems[0] == "stages.json changed since it was recorded (records are written by `mrrec record` only)"
    assert any(p.startswith("stale: stage 03_sft_warmup ran with config hash 0000") for p in problems)


def test_cli_record_readme_check_and_run_record(run, tmp_path, monkeypatch, capsys):
    results = str(tmp_path / "results")
    assert main(["record", str(run.root), "--results-dir", results]) == 0
    assert "files" in capsys.readouterr().out
    readme = _readme(tmp_path / "README.md")
    assert main(["readme", "--run", "r", "--results-dir", results, "--readme", str(readme)]) == 0
    assert "| System | Memory |" in readme.read_text()
    assert main(["check-record", "r", "--results-dir", results]) == 0
    assert main(["record", str(tmp_path / "missing"), "--results-dir", results]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setattr("mrrec_lib.runner.run", lambda *a, **k: run)
    assert main(["run", "params/smoke.yaml", "--record", "--results-dir", results]) == 0
    rec = read_json(tmp_path / "results" / "r" / "record.json")
    assert rec["run_command"] == f"mrrec run params/smoke.yaml --record --results-dir {results}"
    monkeypatch.setattr(stages, "IGNORED_KEYS", stages.IGNORED_KEYS | {"max_users"})
    assert main(["check-record", "r", "--results-dir", results]) == 1


@pytest.mark.skipif(not (ROOT_RESULTS / "default").is_dir(), reason="no committed results/default/ record")
def test_committed_default_record_recomputes_its_table():
    record = ROOT_RESULTS / "default"
    _assert_matches_metrics(recompute_table(record), read_json(record / "metrics" / "05_eval.json"))


@pytest.mark.skipif(not ROOT_RESULTS.is_dir(), reason="no committed results/")
def test_committed_records_hash_as_recorded_under_the_current_code():
    """A key added since (e.g. policy_prompt, hash-neutral at its old behaviour) leaves every record current."""
    from mrrec_lib.results.layout import STAGES_FILE, read_config

    records = sorted(p.parent for p in ROOT_RESULTS.glob(f"*/{STAGES_FILE}"))
    assert (ROOT_RESULTS / "default-sft-320") in records
    for record in records:
        cfg = read_config(record)
        for stage, rec in read_json(record / STAGES_FILE).items():
            assert stages.stage_hash(cfg, stage) == rec["hash"], (record.name, stage)


def test_benchmark_summary_rendered_from_stage01_metrics(run, tmp_path):
    from mrrec_lib.results.readme import BENCH_END, BENCH_START, benchmark_markdown

    results = tmp_path / "results"
    dest = record_run(run.root, results)
    data = {
        "counts": {"queries": 1312, "users": 344, "categories": 24, "interactions": 3723},
        "per_source": {"multicat": {"queries": 1234, "users": 266}, "shop": {"queries": 78, "users": 78}},
        "query_builder": "shared",
        "queries_per_split": {"train": 410, "val": 101, "test": 801},
        "users_per_split": {"train": 126, "val": 25, "test": 193},
        "pool_size": 153558,
        "pool": {"enabled": True, "added": 146484, "duplicate_of_pool": 39, "duplicate_within": 3758,
                 "covered_categories": ["Grocery", "Toys"]},
        "title_overlap_rate": 0.7845, "title_overlap_rate_raw": 0.8194, "title_overlap_rate_extractive": 0.4465,
        "repurchases_dropped": {"total": 6}, "leakage_violations": 0,
    }  # fmt: skip
    write_json(dest / "metrics" / "01_data.json", data)
    block = benchmark_markdown(dest)
    assert "1,312 requests from 344 users in 24 categories" in block and "test 801 (193 users)" in block
    assert "146,484 real distractors" in block and "covering 2 categories" in block and "78.5%" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"{BENCH_START}\nold\n{BENCH_END}\n\n{START}\nold\n{END}\n")
    render_readme(readme, results, "r")
    assert block in readme.read_text() and "\nold\n" not in readme.read_text()


def test_compare_records_is_stage05s_paired_test_and_refuses_other_pools(run, tmp_path, capsys):
    from mrrec_lib.results.compare import IncomparableRecordsError, compare_records

    dest = record_run(run.root, tmp_path / "results")
    recorded = {(t["system"], t["metric"]): t for t in read_json(dest / "metrics" / "05_eval.json")["paired_tests"]}
    result = compare_records(dest, "mrrec", dest, "query_dense")
    assert result["shared_requests"] == len(read_per_query(dest).query("system == 'mrrec'"))
    for t in result["tests"]:
        want = recorded[("query_dense", t["metric"])]
        for key in ("diff", "lo", "hi", "p_permutation", "mdd", "n"):
            assert t[key] == pytest.approx(want[key]), key
    # the same rows under another run name compare as a tie; a different pool or setting is refused
    twin = tmp_path / "results" / "twin"
    twin.mkdir()
    for f in dest.rglob("*"):
        if f.is_file():
            (twin / f.relative_to(dest)).parent.mkdir(parents=True, exist_ok=True)
            (twin / f.relative_to(dest)).write_bytes(f.read_bytes())
    assert all(t["diff"] == 0 for t in compare_records(dest, "mrrec", twin, "mrrec")["tests"])
    hashes = json.loads((twin / "stages.json").read_text())
    hashes["02"]["hash"] = "f" * 16
    (twin / "stages.json").write_text(json.dumps(hashes))
    with pytest.raises(IncomparableRecordsError, match="stage-02 hashes.*no config key"):
        compare_records(dest, "mrrec", twin, "mrrec")
    # another item retriever ranks the same pool: still paired, and the result says what differs ...
    config = yaml.safe_load((twin / "config.yaml").read_text())
    (twin / "config.yaml").write_text(yaml.safe_dump({**config, "item_retriever": "bm25"}))
    across = compare_records(dest, "mrrec", twin, "mrrec")
    assert across["runs_differ_in"] == {"item_retriever": ["dense", "bm25"]}
    assert across["items_ranked_by"] == ["dense", "bm25"]  # a policy ranks with its run's retriever ...
    assert compare_records(dest, "mrrec", twin, "query_dense")["items_ranked_by"] == ["dense", "dense"]  # ... a query row with its own
    # ... as is memory written by another builder (the treatment of that ablation) ...
    (twin / "config.yaml").write_text(yaml.safe_dump({**config, "memory_builder": "llm"}))
    assert compare_records(dest, "mrrec", twin, "mrrec")["runs_differ_in"] == {"memory_builder": ["extractive", "llm"]}
    # ... but not with another stage-02 key changed as well (an approximate index), nor with other data (stage 01)
    (twin / "config.yaml").write_text(yaml.safe_dump({**config, "item_retriever": "bm25", "index_type": "hnsw"}))
    with pytest.raises(IncomparableRecordsError, match="differ in index_type, item_retriever"):
        compare_records(dest, "mrrec", twin, "mrrec")
    (twin / "config.yaml").write_text(yaml.safe_dump({**config, "item_retriever": "bm25"}))
    hashes["01"]["hash"] = "f" * 16
    (twin / "stages.json").write_text(json.dumps(hashes))
    with pytest.raises(IncomparableRecordsError, match="stage-02 hashes\\): different data"):
        compare_records(dest, "mrrec", twin, "mrrec")
    with pytest.raises(KeyError, match="no per-request rows for system 'nope'"):
        compare_records(dest, "nope", dest, "mrrec")
    results = str(tmp_path / "results")
    out = tmp_path / "cmp.json"
    assert main(["compare", "r:mrrec", "r:query_dense", "--results-dir", results, "--out", str(out)]) == 0
    assert "r:mrrec minus r:query_dense on 10 shared requests" in capsys.readouterr().out
    assert read_json(out)["tests"][0]["diff"] == pytest.approx(result["tests"][0]["diff"])
    assert main(["compare", "r", "r:mrrec", "--results-dir", results]) == 2
    assert "RUN:SYSTEM" in capsys.readouterr().err


def _copy_of(record: Path, name: str, files: tuple[str, ...]) -> Path:
    """A sibling record `name` holding only `files` of `record`, for a test to change the rest."""
    copy = record.parent / name
    copy.mkdir()
    for f in files:
        (copy / f).write_bytes((record / f).read_bytes())
    return copy


def test_row_agreement_counts_equal_rows_per_system_and_refuses_other_pools(run, tmp_path, capsys):
    from mrrec_lib.results.agreement import row_agreement
    from mrrec_lib.results.compare import IncomparableRecordsError

    dest = record_run(run.root, tmp_path / "results")
    twin = _copy_of(dest, "twin", ("config.yaml", "stages.json"))
    rows = read_per_query(dest)
    changed = rows.copy()
    mrrec = changed.index[changed["system"] == "mrrec"]
    found = mrrec[np.isfinite(changed.loc[mrrec, "rank_excl"])]
    assert len(found) >= 2
    changed.loc[found[:2], ["rank", "rank_excl"]] += 1  # two answers ranked their target one place lower ...
    other = mrrec.difference(found[:2])
    changed.loc[other[0], "malformed"] = not changed.loc[other[0], "malformed"]  # ... one parsed differently ...
    changed = changed.drop(other[-1])  # ... and one request the twin never scored
    changed.to_csv(twin / "per_query.csv.gz", index=False)
    hashes = json.loads((twin / "stages.json").read_text())
    hashes["04"]["hash"] = "f" * 16
    (twin / "stages.json").write_text(json.dumps(hashes))

    result = row_agreement(dest, twin)
    assert result["stages_differ"] == ["04"]
    by = {r["system"]: r for r in result["systems"]}
    assert set(by) == set(rows["system"])
    n = len(mrrec)
    assert by["mrrec"]["shared"] == n - 1 and by["mrrec"]["requests_a"] == n
    assert by["mrrec"]["rank_excl_equal"] == n - 3 and by["mrrec"]["rank_keep_equal"] == n - 1
    assert by["mrrec"]["malformed_equal"] == n - 2
    dense = by["query_dense"]
    assert dense["rank_excl_equal"] == dense["malformed_equal"] == dense["shared"] == dense["requests_b"]
    assert dense["N@100_a"] == dense["N@100_b"] and by["mrrec"]["N@100_a"] != by["mrrec"]["N@100_b"]
    assert [r["system"] for r in row_agreement(dest, twin, ["mrrec"])["systems"]] == ["mrrec"]
    with pytest.raises(KeyError, match="'nope'.*not recorded in both"):
        row_agreement(dest, twin, ["nope"])
    hashes["02"]["hash"] = "f" * 16
    (twin / "stages.json").write_text(json.dumps(hashes))
    with pytest.raises(IncomparableRecordsError, match="differ in stage 02"):
        row_agreement(dest, twin)
    out = tmp_path / "agree.json"
    assert main(["agree", "r", "r", "--results-dir", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert "r (a) vs r (b): same requests and pool; stage hashes that differ: none" in capsys.readouterr().out
    assert all(s["rank_excl_equal"] == s["shared"] for s in read_json(out)["systems"])
    assert main(["agree", "r", "twin", "--results-dir", str(tmp_path / "results")]) == 2


def test_row_agreement_takes_a_borrowed_policys_stages_from_evaluated_from(run, tmp_path, capsys):
    """A record made by `mrrec evaluate` lists no stage 03/04; the run it borrowed them from supplies their hashes."""
    from mrrec_lib.results.agreement import format_agreement, row_agreement

    dest = record_run(run.root, tmp_path / "results")
    borrower = _copy_of(dest, "borrower", ("config.yaml", "per_query.csv.gz"))
    stages = json.loads((dest / "stages.json").read_text())
    trained = {s: stages.pop(s) for s in ("03", "04")}
    (borrower / "stages.json").write_text(json.dumps(stages))
    assert row_agreement(dest, borrower)["stages_differ"] == ["03", "04"]

    (borrower / "evaluated_from.json").write_text(json.dumps({"trained_run": "r", "trained_stages": trained}))
    result = row_agreement(dest, borrower)
    assert result["stages_differ"] == [] and result["borrowed"] == {"b": {"run": "r", "stages": ["03", "04"]}}
    assert "b's stages 03, 04 are those of r" in format_agreement(result)
    trained["04"]["hash"] = "f" * 16  # the borrowed policy was trained under another GRPO config
    (borrower / "evaluated_from.json").write_text(json.dumps({"trained_run": "r", "trained_stages": trained}))
    assert row_agreement(dest, borrower)["stages_differ"] == ["04"]


@pytest.mark.skipif(
    not all((ROOT_RESULTS / r).is_dir() for r in ("default-sft-320", "default-sft-subset")),
    reason="the committed SFT records are absent",
)
def test_committed_sft_records_compare_on_their_shared_requests():
    """The SFT policy decoded per turn (default-sft-subset) and by the KV engine (default-sft-320): same 60 ranks."""
    from mrrec_lib.results.compare import compare_records

    result = compare_records(
        ROOT_RESULTS / "default-sft-320", "mrrec_sft", ROOT_RESULTS / "default-sft-subset", "mrrec_sft"
    )
    assert result["shared_requests"] == 60 and result["a"]["requests"] == 320
    assert all(t["diff"] == 0 and t["mean_a"] == t["mean_b"] for t in result["tests"])


@pytest.mark.skipif(not (ROOT_RESULTS / "recr1-probe").is_dir(), reason="the committed Rec-R1 record is absent")
def test_compare_on_the_no_overlap_subset_is_stage05s_subset_test():
    """`--subset no_overlap` reproduces stage 05's own paired test on the requests sharing no word with the title."""
    from mrrec_lib.results.compare import compare_records

    rec = ROOT_RESULTS / "recr1-probe"
    result = compare_records(rec, "recr1", rec, "query_dense", subset="no_overlap")
    recorded = read_json(rec / "metrics" / "05_eval.json")["subsets"]["no_overlap"]
    assert result["shared_requests"] == recorded["n_requests"] < result["a"]["requests"]
    want = {t["metric"]: t for t in recorded["paired_tests"] if t["system"] == "query_dense"}
    for t in result["tests"]:
        for key in ("diff", "lo", "hi", "mdd", "n"):
            assert t[key] == pytest.approx(want[t["metric"]][key]), key
    assert result["shared_users"] == recorded["n_users"]
    with pytest.raises(ValueError, match="unknown subset"):
        compare_records(rec, "recr1", rec, "query_dense", subset="short")


@pytest.mark.skipif(
    not all((ROOT_RESULTS / r).is_dir() for r in ("default-sft-801", "default-grpo-probe-801")),
    reason="the committed 801-request records are absent",
)
def test_compare_by_b_format_splits_the_shared_requests():
    """`--b-format` partitions the shared requests by whether B's answer parsed; B's malformed ones score 0.

    `--a-format` narrows by A's answer too: both well-formed leaves only what the two parsed answers say."""
    from mrrec_lib.results.compare import compare_records, format_comparison

    a, b = ROOT_RESULTS / "default-grpo-probe-801", ROOT_RESULTS / "default-sft-801"
    parts = {f: compare_records(a, "mrrec", b, "mrrec_sft", b_format=f) for f in ("any", "wellformed", "malformed")}
    malformed = read_per_query(b).query("system == 'mrrec_sft'")["malformed"].astype(bool).sum()
    assert parts["malformed"]["shared_requests"] == malformed > 0
    assert parts["wellformed"]["shared_requests"] + malformed == parts["any"]["shared_requests"] == 801
    assert all(t["mean_b"] == 0 for t in parts["malformed"]["tests"])
    assert all(t["mean_b"] > 0 for t in parts["wellformed"]["tests"])
    with pytest.raises(ValueError, match="unknown b_format"):
        compare_records(a, "mrrec", b, "mrrec_sft", b_format="parsed")
    both = compare_records(a, "mrrec", b, "mrrec_sft", b_format="wellformed", a_format="wellformed")
    a_rows = read_per_query(a).query("system == 'mrrec'").set_index("qid")
    b_rows = read_per_query(b).query("system == 'mrrec_sft'").set_index("qid")
    parsed = (~a_rows["malformed"].astype(bool) & ~b_rows.loc[a_rows.index, "malformed"].astype(bool)).sum()
    assert both["shared_requests"] == parsed < parts["wellformed"]["shared_requests"]
    assert all(t["mean_a"] > 0 and t["mean_b"] > 0 for t in both["tests"])
    header = format_comparison(both).splitlines()[0]
    assert "default-grpo-probe-801:mrrec wellformed, default-sft-801:mrrec_sft wellformed" in header
    with pytest.raises(ValueError, match="unknown a_format"):
        compare_records(a, "mrrec", b, "mrrec_sft", a_format="parsed")


@pytest.mark.skipif(
    not all((ROOT_RESULTS / r).is_dir() for r in ("default-sft-320", "default-grpo-probe", "recr1-probe", "default-zeroshot-320")),
    reason="the committed 320-request records are absent",
)
def test_combined_table_from_committed_records(tmp_path):
    """Rows of three records side by side: each row is its record's own stage-05 cell, each Δ is `mrrec compare`."""
    from mrrec_lib.results.combined import combined_table, read_spec
    from mrrec_lib.results.compare import compare_records
    from mrrec_lib.results.readme import render_table, table_markers

    spec_file = ROOT_RESULTS / "tables" / "llm_320.yaml"
    spec = read_spec(spec_file)
    table, info = combined_table(spec, ROOT_RESULTS)
    assert (info["requests"], info["users"]) == (320, 126) and len(table) == len(spec.rows)
    dense = table.set_index("row").loc["default-sft-320:query_dense"]
    recorded = read_json(ROOT_RESULTS / "default-sft-320" / "metrics" / "05_eval.json")["systems"]["query_dense"]
    for part, key in (("mean", "N@100"), ("lo", "N@100_lo"), ("hi", "N@100_hi")):
        assert dense[key] == pytest.approx(recorded["metrics"]["N@100"][part])
    recr1 = table.set_index("row").loc["recr1-probe:recr1"]
    direct = compare_records(
        ROOT_RESULTS / "default-grpo-probe", "mrrec", ROOT_RESULTS / "recr1-probe", "recr1", ("N@100", "R@100")
    )["tests"][0]
    assert recr1["d_N@100"] == pytest.approx(direct["diff"]) and recr1["d_N@100_lo"] == pytest.approx(direct["lo"])
    assert recr1["holm_N@100"] >= recr1["p_N@100"]  # adjusted over the table's six comparisons
    assert combined_table(spec, ROOT_RESULTS, "no_overlap")[1]["requests"] == 75

    start, end = table_markers(spec.name)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{start}\nold\n{end}\n")
    render_table(readme, ROOT_RESULTS, spec_file)
    text = readme.read_text()
    assert "\nold\n" not in text and "320 requests from 126 users" in text and "75 requests from 59 users" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: t\nrows: [a:x]\nreference: b:y\n")
    with pytest.raises(ValueError, match="not one of the rows"):
        read_spec(bad)


def test_combined_table_names_what_each_test_time_row_changed(tmp_path):
    """`setting_keys`: a row shows the keys its record's config changes against the reference record's."""
    from mrrec_lib.results.combined import combined_table, read_spec

    spec = read_spec(ROOT_RESULTS / "tables" / "probe_testtime.yaml")
    table, _ = combined_table(spec, ROOT_RESULTS)
    setting = dict(zip(table["row"], table["setting"], strict=True))
    assert setting["default-grpo-probe-on-topk_1:mrrec"] == "memory_top_k=1"
    assert setting["default-grpo-probe-on-no_local_memory:mrrec"] == "local_memory=False"
    assert setting["default-grpo-probe:mrrec"] == "—"
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: t\nrows: [a:x]\nreference: a:x\nsetting_keys: [no_such_key]\n")
    with pytest.raises(ValueError, match="not config keys"):
        read_spec(bad)


def test_801_rows_extend_the_320_rows_they_resumed_from():
    """The 801-request evaluations resumed from the 320-request logs: on the shared requests every rank is the same."""
    for big, small, system in (
        ("default-grpo-probe-801", "default-grpo-probe", "mrrec"),
        ("recr1-probe-801", "recr1-probe", "recr1"),
        ("default-sft-801", "default-sft-320", "mrrec_sft"),
    ):
        a = read_per_query(ROOT_RESULTS / big)
        b = read_per_query(ROOT_RESULTS / small)
        a = a[a["system"] == system].set_index("qid")
        b = b[b["system"] == system].set_index("qid")
        assert len(a) == 801 and len(b) == 320 and set(b.index) <= set(a.index)
        cols = ["rank_excl", "rank_keep", "malformed", "tool_calls"]
        pd.testing.assert_frame_equal(a.loc[b.index, cols], b[cols], check_dtype=False)


def test_replicate_rows_are_shown_kept_out_of_holm_and_bound_the_other_rows(tmp_path):
    """`replicates`: the reference retrained with another seed is one draw of run-to-run noise, not a hypothesis."""
    import shutil

    import yaml

    from mrrec_lib.eval.stats import holm
    from mrrec_lib.results.combined import combined_table, read_spec, table_markdown, within_noise

    for run in ("default-grpo-probe", "grpo-probe-topk_1", "grpo-probe-no_local_memory"):
        shutil.copytree(ROOT_RESULTS / run, tmp_path / run)
    rerun = tmp_path / "default-grpo-probe-rerun"
    shutil.copytree(ROOT_RESULTS / "default-grpo-probe", rerun)
    cfg = yaml.safe_load((rerun / "config.yaml").read_text())
    (rerun / "config.yaml").write_text(yaml.safe_dump({**cfg, "grpo_seed": 1}))
    tables = tmp_path / "tables"
    tables.mkdir()
    spec_file = tables / "t.yaml"
    rows = ["grpo-probe-topk_1:mrrec", "grpo-probe-no_local_memory:mrrec", "default-grpo-probe-rerun:mrrec",
            "default-grpo-probe:mrrec"]
    spec_file.write_text(yaml.safe_dump({
        "title": "t", "rows": rows, "reference": "default-grpo-probe:mrrec", "metrics": ["N@100"],
        "setting_keys": ["memory_top_k", "local_memory"], "replicates": ["default-grpo-probe-rerun:mrrec"]}))
    spec = read_spec(spec_file)
    table, _ = combined_table(spec, tmp_path)
    by_row = table.set_index("row")
    assert by_row.loc["default-grpo-probe-rerun:mrrec", "replicate"]
    assert by_row.loc["default-grpo-probe-rerun:mrrec", "d_N@100"] == 0  # identical per-request rows
    assert math.isnan(by_row.loc["default-grpo-probe-rerun:mrrec", "holm_N@100"])
    ablated = ["grpo-probe-topk_1:mrrec", "grpo-probe-no_local_memory:mrrec"]
    assert by_row.loc[ablated, "holm_N@100"].tolist() == pytest.approx(holm(by_row.loc[ablated, "p_N@100"].tolist()))
    assert within_noise(table, "N@100") == []  # a zero spread holds no ablation with a nonzero difference
    printed = pd.DataFrame({"row": ["rep", "same", "above"], "replicate": [True, False, False],
                            "d_N@100": [-0.0369, -0.0374, 0.0376]})
    assert within_noise(printed, "N@100") == ["same"]  # -0.037 beside -0.037 is inside; 0.038 is not
    from mrrec_lib.viz.record_tables import CommittedTable, json_record

    assert json_record(CommittedTable(spec, table, 320, 126))["run_to_run"] == {
        "metric": "N@100", "spread": 0.0, "rows_within": [], "runs": 2, "mean": None, "sd": None}
    text = table_markdown(spec, tmp_path, tmp_path)
    assert "— replicate" in text and "Run-to-run: reference minus replicate" in text and "0 of 2 other rows" in text
    assert "has sd" not in text  # one replicate: |Δ| is all there is

    # A second replicate (the top-1 run's answers under the reference's config with grpo_seed 2): the spread is the
    # largest |Δ| and the sd is taken over the three runs' scores.
    second = tmp_path / "default-grpo-probe-rerun2"
    shutil.copytree(ROOT_RESULTS / "grpo-probe-topk_1", second)
    (second / "config.yaml").write_text(yaml.safe_dump({**cfg, "grpo_seed": 2}))
    two = {**yaml.safe_load(spec_file.read_text())}
    two["rows"] = [*rows[:-1], "default-grpo-probe-rerun2:mrrec", rows[-1]]
    two["replicates"] = ["default-grpo-probe-rerun:mrrec", "default-grpo-probe-rerun2:mrrec"]
    spec_file.write_text(yaml.safe_dump(two))
    spec = read_spec(spec_file)
    table, _ = combined_table(spec, tmp_path)
    by_row = table.set_index("row")
    d2 = by_row.loc["default-grpo-probe-rerun2:mrrec", "d_N@100"]
    noise = json_record(CommittedTable(spec, table, 320, 126))["run_to_run"]
    scores = by_row.loc[["default-grpo-probe:mrrec", "default-grpo-probe-rerun:mrrec", "default-grpo-probe-rerun2:mrrec"], "N@100"]
    assert noise["spread"] == pytest.approx(abs(d2)) and noise["runs"] == 3
    assert noise["sd"] == pytest.approx(float(scores.std(ddof=1))) and noise["sd"] > 0
    assert noise["mean"] == pytest.approx(float(scores.mean()))
    assert noise["rows_within"] == [r for r in ablated if abs(by_row.loc[r, "d_N@100"]) <= abs(d2)]
    text = table_markdown(spec, tmp_path, tmp_path)
    assert f"Over the 3 runs of this configuration N@100 has mean {scores.mean():.3f} and sd {noise['sd']:.3f}" in text

    bad = yaml.safe_load(spec_file.read_text())
    spec_file.write_text(yaml.safe_dump({**bad, "replicates": ["grpo-probe-topk_1:mrrec"]}))
    with pytest.raises(ValueError, match=r"also changes \['memory_top_k'\]"):
        combined_table(read_spec(spec_file), tmp_path)
    for replicate in ("default-grpo-probe:mrrec", "nowhere:mrrec"):
        spec_file.write_text(yaml.safe_dump({**bad, "replicates": [replicate]}))
        with pytest.raises(ValueError, match="must be rows of the reference's system"):
            read_spec(spec_file)


def test_study_plan_rendered_between_its_markers(tmp_path):
    """The committed plan becomes a docs table (status, minutes left); a missing or foreign file is named."""
    from mrrec_lib.results.readme import render_study, study_markers

    plan = ROOT_RESULTS / "study-grpo-probe.json"
    data = read_json(plan)
    start, end = study_markers("study-grpo-probe")
    doc = tmp_path / "results.md"
    doc.write_text(f"intro\n{start}\nold\n{end}\nafter\n")
    assert render_study(doc, plan) == "study-grpo-probe"
    text = doc.read_text()
    recorded = sum(r["status"] == "recorded" for r in data["ablations"])
    assert "\nold\n" not in text and text.endswith(f"{end}\nafter\n")
    assert f"{recorded} of {len(data['ablations'])} runs recorded" in text
    left = "nothing left" if data["minutes_left"] < 0.5 else f"{data['minutes_left']:,.0f} min"
    assert left in text and "--scale params/eval/grpo_probe.yaml" in text
    assert text.count("| `grpo-probe-") == len(data["ablations"]) - 1  # every row but the base run
    with pytest.raises(FileNotFoundError, match="dry-run"):
        render_study(doc, tmp_path / "study-none.json")
    foreign = tmp_path / "study-x.json"
    foreign.write_text("{}")
    with pytest.raises(ValueError, match="not a study plan"):
        render_study(doc, foreign)


@pytest.mark.parametrize(("minutes", "wording"), [
    (0, "1 of 1 runs recorded in `results/`, nothing left,"),
    (28.4, "28 min of 2-core CPU left,"),
    (2864, "2,864 min (~48 h of 2-core CPU) left,"),
])
def test_study_plan_states_time_left_in_units_that_read_right(tmp_path, minutes, wording):
    """Under an hour the rest is given in minutes alone: "(~0 h)" for 28 minutes would read as nothing left."""
    from mrrec_lib.results.readme import study_markdown

    plan = tmp_path / "study-x.json"
    row = {"ablation": "a", "run": "abl-a", "status": "left" if minutes else "recorded", "minutes_left": minutes,
           "stages_left": ["05"] if minutes else []}
    plan.write_text(json.dumps({"base": "params/default.yaml", "minutes_left": minutes, "ablations": [row],
                                "written_at": "2026-12-06T00:00:00"}))
    text = study_markdown(plan)
    assert wording in text and ("~0 h" not in text)


def _twin_record(record: Path, name: str, **changes) -> Path:
    """A copy of `record` beside it as `name`, its config changed by `changes` (its rows are the same)."""
    twin = record.parent / name
    for f in record.rglob("*"):
        if f.is_file():
            (twin / f.relative_to(record)).parent.mkdir(parents=True, exist_ok=True)
            (twin / f.relative_to(record)).write_bytes(f.read_bytes())
    cfg = yaml.safe_load((twin / "config.yaml").read_text())
    (twin / "config.yaml").write_text(yaml.safe_dump({**cfg, **changes}))
    return twin


def test_pairs_table_is_compare_on_the_requests_where_both_answers_parsed(run, tmp_path):
    """Each row is `mrrec compare --a-format --b-format` on its own requests; a pair not recorded yet is named; a
    rendered block edited afterwards is reported by `mrrec readme --check`."""
    from mrrec_lib.results import pairs_table as pt
    from mrrec_lib.results.compare import compare_records
    from mrrec_lib.results.readme import outdated_blocks, render_table, table_markers

    results = tmp_path / "results"
    rec = record_run(run.root, results)

    def spec(**changes) -> Path:
        path = results / "tables" / "parsed.yaml"
        path.parent.mkdir(exist_ok=True)
        data = {"kind": "pairs", "title": "Parsed.", "a_format": "wellformed", "b_format": "wellformed",
                "pairs": [[f"{rec.name}:mrrec", f"{rec.name}:zeroshot_none"], [f"{rec.name}:mrrec", "absent:mrrec"]]}
        path.write_text(yaml.safe_dump({**data, **changes}))
        return path

    table = pt.pairs_table(pt.read_pairs_spec(spec()), results)
    rows = read_per_query(rec).set_index(["system", "qid"])["malformed"].astype(bool)
    parsed = (~rows.loc["mrrec"] & ~rows.loc["zeroshot_none"]).sum()
    assert rows.loc["zeroshot_none"].any() and table["requests"].tolist() == [parsed]
    cli = compare_records(rec, "mrrec", rec, "zeroshot_none", ("N@100",), a_format="wellformed", b_format="wellformed")
    assert table["diff"].iloc[0] == pytest.approx(cli["tests"][0]["diff"]) and table["mean_b"].iloc[0] > 0
    start, end = table_markers("parsed")
    readme = tmp_path / "README.md"
    readme.write_text(f"{start}\nold\n{end}\n")
    assert render_table(readme, results, spec()) == "parsed"
    text = readme.read_text()
    assert f"| {parsed} (" in text and "both answers wellformed" in text
    assert f"Not recorded yet: `{rec.name}:mrrec − absent:mrrec`" in text
    assert outdated_blocks(readme, results) == []
    readme.write_text(text.replace(f"| {parsed} (", f"| {parsed + 1} ("))  # a hand edit, or records moved on
    assert outdated_blocks(readme, results) == [
        f"{readme}: outdated, re-render with `mrrec readme --table {results}/tables/parsed.yaml --readme {readme}`"
    ]
    assert main(["readme", "--check", "--readme", str(readme), "--results-dir", str(results)]) == 1
    with pytest.raises(ValueError, match="unknown answer format"):
        pt.read_pairs_spec(spec(b_format="parsed"))
    with pytest.raises(ValueError, match=r"needs \[A, B\] items"):
        pt.read_pairs_spec(spec(pairs=[["a:mrrec", "b:mrrec", "c:mrrec"]]))
    with pytest.raises(ValueError, match="not the B side of any pair"):
        pt.read_pairs_spec(spec(replicates=["rep:mrrec"]))

    _twin_record(rec, "rep", grpo_seed=7)
    _twin_record(rec, "moved", grpo_seed=7, memory_top_k=5)
    pairs = [[f"{rec.name}:mrrec", f"{rec.name}:zeroshot_none"], [f"{rec.name}:mrrec", "rep:mrrec"]]
    table = pt.pairs_table(pt.read_pairs_spec(spec(pairs=pairs, replicates=["rep:mrrec"])), results)
    assert table["replicate"].tolist() == [False, True] and table["diff"].iloc[1] == 0  # the same rows, retrained "noise" 0
    assert pt.noise_lines(table) == [f"Run-to-run noise of `{rec.name}:mrrec`: the largest |Δ| of its 1 replicate "
                                     "(another `grpo_seed`, nothing else changed) is 0.000; no other pair of it is within that."]
    moved = [*pairs, [f"{rec.name}:mrrec", "moved:mrrec"]]
    with pytest.raises(ValueError, match=r"also changes \['memory_top_k'\]"):
        pt.pairs_table(pt.read_pairs_spec(spec(pairs=moved, replicates=["rep:mrrec", "moved:mrrec"])), results)


def test_seed_table_pairs_within_each_run_and_refuses_other_changes(run, tmp_path):
    """Data-seed replicas: each run's Δ is its own within-run `mrrec compare`; a replica changing more is refused."""
    from mrrec_lib.results import seed_table as st
    from mrrec_lib.results.combined import read_spec
    from mrrec_lib.results.compare import compare_records
    from mrrec_lib.results.readme import render_table, table_markers

    results = tmp_path / "results"
    dest = record_run(run.root, results)
    base_seed = yaml.safe_load((dest / "config.yaml").read_text())["seed"]

    def replica(name: str, **changes) -> None:
        _twin_record(dest, name, **changes)

    def spec(*runs: str):
        path = tmp_path / "seeds.yaml"
        path.write_text(yaml.safe_dump({"kind": "seeds", "title": "Seeds.", "runs": list(runs), "system": "mrrec",
                                        "baseline": "query_dense"}))  # fmt: skip
        return path

    replica("s1", seed=base_seed + 1)
    replica("s2", seed=base_seed + 2)
    two = st.read_seed_spec(spec(dest.name, "s1", "s9"))
    assert "Only 2 runs so far" in st.seed_markdown(two, results, tmp_path)
    assert "Not recorded yet: `s9`" in st.seed_markdown(two, results, tmp_path)
    three = st.read_seed_spec(spec(dest.name, "s1", "s2"))
    table = st.seed_table(three, results)
    within = compare_records(dest, "mrrec", dest, "query_dense")["tests"][0]
    assert table["seed"].tolist() == [base_seed, base_seed + 1, base_seed + 2]
    assert table["d_N@100"].tolist() == pytest.approx([within["diff"]] * 3)
    assert st.spread(table, "system_N@100")[1] == pytest.approx(0.0)  # the same rows on every "split": no spread
    start, end = table_markers("seeds")
    readme = tmp_path / "README.md"
    readme.write_text(f"{start}\nold\n{end}\n")
    assert render_table(readme, results, spec(dest.name, "s1", "s2")) == "seeds"
    assert "Over the 3 splits" in readme.read_text() and "\nold\n" not in readme.read_text()
    with pytest.raises(ValueError, match="not a combined table"):
        read_spec(tmp_path / "seeds.yaml")
    replica("moved", seed=base_seed + 3, memory_top_k=5)
    with pytest.raises(ValueError, match=r"also changes \['memory_top_k'\]"):
        st.seed_table(st.read_seed_spec(spec(dest.name, "moved")), results)
