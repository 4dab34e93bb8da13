"""Stage-05 evaluation with fakes: dispatch, caching/resume, missing systems, aggregation, Table 1, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.eval import report
from mrrec_lib.eval.case_study import case_studies, format_case_study
from mrrec_lib.eval.context import EvalContext, format_naive_memory, select_eval_queries
from mrrec_lib.eval.evaluate import evaluate_systems
from mrrec_lib.eval.systems import SystemOutput, resolve_systems, retrieval_text, tool_results
from mrrec_lib.runs import MissingStageError, RunPaths

CATS = ["Snacks", "Snacks", "Snacks", "Snacks", "Snacks", "Beauty", "Beauty", "Beauty", "Tea", "Tea"]


def _queries() -> pd.DataFrame:
    n = len(CATS)
    test = pd.DataFrame(
        {
            "qid": [f"q{i:02d}" for i in range(n)],
            "user_id": [f"u{i % 4}" for i in range(n)],
            "target_item_id": [f"i{i}" for i in range(n)],
            "category": CATS,
            "raw_query": [f"I want item {i}" for i in range(n)],
            "query": [f"need something like item {i}" for i in range(n)],
            "split": "test",
            "target_timestamp": [1000 + i for i in range(n)],
        }
    )
    train = test.assign(qid=lambda d: "t" + d["qid"], split="train")
    return pd.concat([test, train], ignore_index=True)


ITEMS = pd.DataFrame(
    {"item_id": [f"i{i}" for i in range(40)], "title": [f"Item {i}" for i in range(40)], "category": "x"}
)


class FakeRetriever:
    """Rank 1 when the text names the target item id token, rank 7 when it names its number, else 500."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def ranks(self, texts, targets):
        self.calls.append(list(texts))
        out = []
        for t, g in zip(texts, targets, strict=True):
            words = t.split()
            out.append(1 if g in words else 7 if g[1:] in words else 500)
        return np.array(out)

    def search(self, texts, k):
        return [[f"i{j}" for j in range(k)] for _ in texts], np.zeros((len(texts), k))


class FakeTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


class FakeLLM:
    """Answers with the query's item number boxed; every third conversation gets garbage."""

    def __init__(self) -> None:
        self.conversations: list = []

    def chat(self, conversations, sampling, n=1, tools=None):
        out = []
        for conv in conversations:
            self.conversations.append(conv)
            number = conv[-1]["content"].split("item ")[1].split('"')[0].split()[0]
            if len(self.conversations) % 3 == 0:
                out.append([f"I think item {number} is nice"])
            else:
                out.append([f'\\boxed{{"ideal_item_profile": "great product i{number}"}}'])
        return out


def _ctx(tmp_path, **cfg_kw) -> tuple[EvalContext, dict]:
    cfg = Config(outputs_dir=str(tmp_path), run_name="r", bootstrap_samples=200, **cfg_kw)
    paths = RunPaths(tmp_path / "r").ensure()
    retrievers = {"dense": FakeRetriever(), "bm25": FakeRetriever()}
    ctx = EvalContext(
        cfg, paths, queries=_queries(), items=ITEMS, retrievers=retrievers, llm=FakeLLM(), tokenizer=FakeTokenizer()
    )
    ctx.naive_memory_text = lambda row: f"bought {row['user_id']} things"  # type: ignore[method-assign]
    ctx.static_memory_text = lambda row: ""  # type: ignore[method-assign]
    return ctx, retrievers


def _fixed_runner(rank_of: dict[str, str], calls: list | None = None):
    """A runner factory whose text makes FakeRetriever return rank 1 (target id) or 500."""

    def factory(spec, ctx):
        def run(batch):
            if calls is not None:
                calls.append((spec.name, batch["qid"].tolist()))
            return [
                SystemOutput(qid=q, text=(t if rank_of.get(q) == "hit" else "nothing"), memory_tokens=10)
                for q, t in zip(batch["qid"], batch["target_item_id"], strict=True)
            ]

        return run

    return factory


# ---- dispatch, caching, missing systems ------------------------------------------------


def test_dispatch_routes_each_system_to_its_runner_and_retriever(tmp_path):
    ctx, retrievers = _ctx(tmp_path)
    calls: list = []
    policy = _fixed_runner({"q00": "hit"}, calls)
    systems = ["query_dense", "query_bm25", "zeroshot_none", "zeroshot_naive", "mrrec"]
    res = evaluate_systems(ctx.cfg, ctx.paths, systems, context=ctx, runners={"policy": policy}, progress=False)
    assert res.missing == {}
    assert set(res.per_query["system"]) == set(systems)
    assert len(res.per_query) == len(systems) * 10
    # The bm25 retriever saw exactly the raw queries once; dense saw queries, zero-shot profiles and policy texts.
    assert retrievers["bm25"].calls == [ctx.queries["query"].tolist()]
    assert ctx.queries["query"].tolist() in retrievers["dense"].calls
    qids = ctx.queries["qid"].tolist()
    assert calls == [("mrrec", qids[:8]), ("mrrec", qids[8:])]  # batches of rollout_batch_size
    # Query systems: item number in the query -> rank 7 everywhere.
    assert (res.system_rows("query_dense")["rank"] == 7).all()
    # Zero-shot: the prompt carries naive memory only for the naive setting, and its tokens are counted.
    naive = res.system_rows("zeroshot_naive")
    assert (naive["memory_tokens"] == 3).all() and (res.system_rows("zeroshot_none")["memory_tokens"] == 0).all()
    assert any("bought u0 things" in c[-1]["content"] for c in ctx.llm.conversations)
    mrrec = res.system_rows("mrrec").set_index("qid")
    assert mrrec.loc["q00", "rank"] == 1 and mrrec.loc["q01", "rank"] == 500


def test_zeroshot_malformed_outputs_are_counted_and_scored_by_setting(tmp_path):
    for mode, expected_rank in (("raw_text", 7.0), ("zero", math.inf)):
        ctx, _ = _ctx(tmp_path / mode, eval_baseline_malformed=mode)
        res = evaluate_systems(ctx.cfg, ctx.paths, ["zeroshot_none"], context=ctx, progress=False)
        df = res.per_query
        bad = df[df["malformed"]]
        assert len(bad) == 3  # every third answer is not boxed
        assert (bad["rank"] == expected_rank).all()
        assert (df.loc[~df["malformed"], "rank"] == 1).all()
        summary = report.system_summary(res)
        assert summary.loc[0, "malformed_rate"] == pytest.approx(0.3)
        if mode == "zero":
            assert (bad[["R@10", "N@1000"]] == 0).all().all()
            assert (bad["text"] == "").all() and (bad["parse_error"] != "").all()
            case = case_studies(res, ITEMS, n=10, system="zeroshot_none")
            shown = [format_case_study(c) for c in case if c["malformed"]]
            assert len(shown) == 3 and all("nothing was retrieved (scored 0)" in m and "nan" not in m for m in shown)


def test_static_setting_without_profile_falls_back_to_no_memory_prompt(tmp_path):
    ctx, _ = _ctx(tmp_path)
    res = evaluate_systems(ctx.cfg, ctx.paths, ["zeroshot_static"], context=ctx, progress=False)
    assert (res.per_query["memory_tokens"] == 0).all()
    assert not any("profile of this user" in c[-1]["content"] for c in ctx.llm.conversations)


def test_results_are_cached_and_a_crashed_run_resumes(tmp_path):
    ctx, _ = _ctx(tmp_path, llm_batch_size=4)
    res1 = evaluate_systems(ctx.cfg, ctx.paths, ["zeroshot_none"], context=ctx, progress=False)
    assert len(ctx.llm.conversations) == 10
    cache = next((ctx.paths.logs / "05_eval").glob("zeroshot_none-*.jsonl"))
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:6]) + "\n" + lines[6][:20])  # killed mid-write in the second batch
    ctx2, _ = _ctx(tmp_path, llm_batch_size=4)
    res2 = evaluate_systems(ctx2.cfg, ctx2.paths, ["zeroshot_none"], context=ctx2, progress=False)
    assert len(ctx2.llm.conversations) == 4  # only the 4 lost queries ran again
    assert res2.per_query["qid"].tolist() == res1.per_query["qid"].tolist()
    ctx3, _ = _ctx(tmp_path, llm_batch_size=4)
    evaluate_systems(ctx3.cfg, ctx3.paths, ["zeroshot_none"], context=ctx3, progress=False)
    assert ctx3.llm.conversations == []
    # An output-relevant key changes the fingerprint: nothing is reused.
    ctx4, _ = _ctx(tmp_path, llm_batch_size=4, eval_baseline_malformed="zero")
    evaluate_systems(ctx4.cfg, ctx4.paths, ["zeroshot_none"], context=ctx4, progress=False)
    assert len(ctx4.llm.conversations) == 10


def test_missing_checkpoint_is_reported_not_dropped(tmp_path):
    ctx, _ = _ctx(tmp_path)
    res = evaluate_systems(ctx.cfg, ctx.paths, ["query_dense", "recr1", "mrrec"], context=ctx, progress=False)
    assert set(res.missing) == {"recr1", "mrrec"}
    assert "stage 04" in res.missing["recr1"] and "policy_uses_memory: false" in res.missing["recr1"]
    assert res.evaluated == ["query_dense"]
    rep = report.build_report(res)
    assert rep.summary["status"].tolist() == ["ok", report.NOT_RUN, report.NOT_RUN]
    assert (rep.table.iloc[1:, 2:] == report.NOT_RUN).all().all()
    assert rep.metrics["systems"]["recr1"]["status"] == report.NOT_RUN
    assert "stage 04" in rep.metrics["systems"]["recr1"]["reason"]
    md = report.to_markdown(rep.table, report.missing_footnotes(rep.summary))
    assert "`recr1` not run: " in md
    assert rep.tests.empty  # the reference (mrrec) did not run


def test_grpo_that_kept_its_sft_start_reuses_the_sft_answers(tmp_path):
    from mrrec_lib.train.checkpoints import final_dir, write_policy_meta

    ctx, _ = _ctx(tmp_path)
    grpo = final_dir(ctx.paths, "grpo")
    grpo.mkdir(parents=True)
    write_policy_meta(grpo, base={"which": "sft"}, adapter=True, info={"best_step": 0})
    calls: list = []
    runners = {"policy": _fixed_runner({"q00": "hit"}, calls)}
    res = evaluate_systems(ctx.cfg, ctx.paths, ["mrrec_sft", "mrrec"], context=ctx, runners=runners, progress=False)
    assert {name for name, _ in calls} == {"mrrec_sft"} and res.reused == {"mrrec": "mrrec_sft"}
    sft, rl = res.system_rows("mrrec_sft"), res.system_rows("mrrec")
    assert rl["rank"].tolist() == sft["rank"].tolist() and len(rl) == 10
    # A GRPO step that beat the start is a different policy: it is rolled out.
    write_policy_meta(grpo, base={"which": "sft"}, adapter=True, info={"best_step": 4})
    res = evaluate_systems(ctx.cfg, ctx.paths, ["mrrec_sft", "mrrec"], context=ctx, runners=runners, progress=False)
    assert res.reused == {} and ("mrrec", ctx.queries["qid"].tolist()[:8]) in calls


def test_recr1_from_another_run_must_share_the_data(tmp_path):
    from mrrec_lib import stages

    ctx, _ = _ctx(tmp_path, eval_recr1_run="other")
    other = RunPaths(tmp_path / "other").ensure()
    final = other.models / "recr1" / "final"
    final.mkdir(parents=True)
    (final / "mrrec_policy.json").write_text("{}")
    stages.record_stage(other, "01", Config(max_users=3), 1.0)
    with pytest.raises(MissingStageError, match="same data"):
        ctx.policy_dir("recr1")
    stages.record_stage(other, "01", ctx.cfg, 1.0)
    assert ctx.policy_dir("recr1") == final


def test_unknown_system_is_an_error():
    with pytest.raises(ValueError, match="unknown eval system"):
        resolve_systems(["mrrec", "gpt5"])


# ---- aggregation, Table 1, paired tests ----------------------------------------------------


def _two_system_result(tmp_path, hits_a, hits_b, names=("mrrec", "mrrec_sft")):
    ctx, _ = _ctx(tmp_path)
    runners = {names[0]: _fixed_runner(hits_a), names[1]: _fixed_runner(hits_b)}
    return evaluate_systems(ctx.cfg, ctx.paths, list(names), context=ctx, runners=runners, progress=False)


def test_per_category_aggregation_matches_hand_computation(tmp_path):
    hits = {"q00": "hit", "q01": "hit", "q05": "hit"}
    res = _two_system_result(tmp_path, hits, {})
    cats = report.category_summary(res)
    row = cats[(cats.system == "mrrec") & (cats.category == "Snacks") & (cats.metric == "R@10")].iloc[0]
    assert row["n"] == 5 and row["mean"] == pytest.approx(2 / 5)
    row = cats[(cats.system == "mrrec") & (cats.category == "Beauty") & (cats.metric == "N@100")].iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(1 / 3)  # rank 1 -> nDCG 1
    assert row["lo"] <= row["mean"] <= row["hi"]
    assert cats[(cats.system == "mrrec_sft") & (cats.metric == "R@1000")]["mean"].eq(1.0).all()  # rank 500
    overall = report.system_summary(res).set_index("system")
    assert overall.loc["mrrec", "R@10"] == pytest.approx(0.3)
    assert overall.loc["mrrec", "efficiency"] == pytest.approx(overall.loc["mrrec", "R@100"] / 0.1)


def test_table1_formatting(tmp_path):
    res = _two_system_result(tmp_path, {"q00": "hit"}, {})
    rep = report.build_report(res)
    assert rep.top == ["Snacks", "Beauty", "Tea"]
    t = rep.table
    assert list(t.columns[:3]) == ["System", "Memory", "n"]
    assert "Snacks (n=5) R@100" in t.columns and "Tea (n=2) N@100" in t.columns
    assert t.loc[0, "R@10"] == "{:.3f} [{:.3f}, {:.3f}]".format(*rep.summary.loc[0, ["R@10", "R@10_lo", "R@10_hi"]])
    assert t.loc[0, "Snacks (n=5) R@100"] == "0.200"
    assert t.loc[0, "Memory"] == "hierarchical + reasoning" and "MR.Rec" in t.loc[0, "System"]
    md = report.to_markdown(t)
    assert md.splitlines()[0].startswith("| System | Memory | n | R@10")
    assert len(md.splitlines()) == 2 + len(t)


def test_paired_test_of_identical_systems_has_zero_difference(tmp_path):
    hits = {"q00": "hit", "q03": "hit", "q07": "hit"}
    res = _two_system_result(tmp_path, hits, hits)
    tests = report.paired_tests(res)
    assert set(tests["metric"]) == {"N@100", "R@100"}
    assert (tests["reference"] == "mrrec").all() and (tests["system"] == "mrrec_sft").all()
    assert (tests["diff"] == 0).all() and (tests["n"] == 10).all()
    assert (tests["p_permutation"] > 0.5).all()


def test_paired_test_direction_is_reference_minus_other(tmp_path):
    res = _two_system_result(tmp_path, {f"q{i:02d}": "hit" for i in range(10)}, {})
    tests = report.paired_tests(res).set_index("metric")
    assert tests.loc["R@100", "diff"] == pytest.approx(1.0)  # rank 1 vs rank 500 on every query
    assert tests.loc["N@100", "diff"] == pytest.approx(1.0)
    assert tests.loc["N@100", "p_permutation"] < 0.05


def test_metrics_record_is_flattened_by_the_ablation_summary(tmp_path):
    from mrrec_lib.ablate import flatten_metrics
    from mrrec_lib.runs import write_json

    res = _two_system_result(tmp_path, {"q00": "hit"}, {})
    rep = report.build_report(res)
    write_json(RunPaths(tmp_path / "r").metrics_file("05_eval"), rep.metrics)
    rows = {r["system"]: r for r in flatten_metrics(tmp_path / "r")}
    assert rows["mrrec"]["R@10"] == pytest.approx(0.1) and "R@10_lo" in rows["mrrec"]
    assert rows["mrrec"]["memory_tokens"] == 10


def test_write_report_outputs(tmp_path):
    res = _two_system_result(tmp_path, {"q00": "hit"}, {})
    rep = report.build_report(res)
    out = report.write_report(rep, res, RunPaths(tmp_path / "r"))
    per_query = pd.read_parquet(out["per_query"])
    assert len(per_query) == 20 and {"qid", "system", "rank", "R@100", "latency_s", "memory_tokens", "profile"} <= set(
        per_query.columns
    )
    csv = pd.read_csv(out["table1_csv"])
    assert {"R@100", "R@100_lo", "R@100_hi", "status"} <= set(csv.columns)


# ---- small helpers ---------------------------------------------------------------------------


def test_eval_query_selection_is_prefix_stable():
    q = _queries()
    small = select_eval_queries(q, Config(eval_max_queries=4))
    big = select_eval_queries(q, Config(eval_max_queries=7))
    assert len(small) == 4 and set(small["qid"]) <= set(big["qid"])
    assert (select_eval_queries(q, Config())["split"] == "test").all()
    with pytest.raises(ValueError, match="eval_split"):
        select_eval_queries(q[q.split == "train"], Config())


def test_naive_memory_is_the_most_recent_n_oldest_first():
    hist = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "timestamp": [3, 1, 2],
            "rating": [5.0, 4.0, float("nan")],
            "review_title": ["love it", "", "ok"],
            "category": ["Snacks", "Tea", ""],
        }
    )
    text = format_naive_memory(hist, ITEMS, 2)
    assert text.splitlines() == ['- Item 3 (x): "ok"', '- Item 1 (Snacks), rated 5/5: "love it"']


def test_retrieval_text_and_tool_result_pairing():
    from mrrec_lib.agent.trajectory import ToolCallRecord, Trajectory

    assert retrieval_text("profile", True, "raw", "zero") == "profile"
    assert retrieval_text("", False, "raw", "raw_text") == "raw"
    assert retrieval_text("", False, "raw", "zero") is None
    t = Trajectory(
        qid="q",
        prompt_kind="mrrec",
        messages=[{"role": "tool", "content": "[a] memory"}, {"role": "tool", "content": "Error: bad"}],
        tool_calls=[ToolCallRecord(query="x", entry_ids=["a"]), ToolCallRecord(query=None, error="bad")],
    )
    assert tool_results(t) == ["[a] memory"]


def test_case_study(tmp_path):
    res = _two_system_result(tmp_path, {f"q{i:02d}": "hit" for i in range(10)}, {})
    cases = case_studies(res, ITEMS, n=2)
    assert len(cases) == 2 and all(c["system"] == "mrrec" for c in cases)
    c = cases[0]
    assert c["ranks"]["mrrec"] == 1 and c["ranks"]["mrrec_sft"] == 500
    md = format_case_study(c)
    assert c["request"] in md and "Top-5 items" in md and f"**Target:** Item {c['target']['item_id'][1:]}" in md
