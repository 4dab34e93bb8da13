"""Stage-05 evaluation with fakes: dispatch, caching/resume, missing systems, the four settings (malformed rule x
history exclusion), reference templates, labels, aggregation, Table 1, subsets, user-clustered paired tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.eval import report, stats
from mrrec_lib.eval.case_study import case_studies, format_case_study
from mrrec_lib.eval.context import EvalContext, format_naive_memory, select_eval_queries
from mrrec_lib.eval.evaluate import evaluate_systems
from mrrec_lib.eval.systems import SystemOutput, kept_start_note, resolve_systems, tool_results
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
# Earlier purchases: u0 bought i30 before all its queries and i31 after them; u1 i32, u2 i33 before; u3 i34 after.
INTERACTIONS = pd.DataFrame(
    {
        "user_id": ["u0", "u0", "u1", "u2", "u3"],
        "item_id": ["i30", "i31", "i32", "i33", "i34"],
        "timestamp": [500, 5000, 999, 500, 1009],
    }
)


class FakeRetriever:
    """Rank 1 when the text names the target item id token, rank 7 when it names its number, else 500.

    Scores follow the same rule (2 / 1 / 0), so a history item the text names outranks a target it does not.
    """

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @staticmethod
    def _score(text: str, item: str) -> float:
        words = text.split()
        return 2.0 if item in words else 1.0 if item[1:] in words else 0.0

    def ranks(self, texts, targets):
        self.calls.append(list(texts))
        return np.array([{2.0: 1, 1.0: 7, 0.0: 500}[self._score(t, g)] for t, g in zip(texts, targets, strict=True)])

    def item_scores(self, texts, item_ids):
        return [[self._score(t, i) for i in ids] for t, ids in zip(texts, item_ids, strict=True)]

    def search(self, texts, k):
        return [[f"i{j}" for j in (30, *range(k - 1))] for _ in texts], np.zeros((len(texts), k))


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


def _ctx(
    tmp_path, queries=None, items=ITEMS, store=None, retrievers=None, run="r", **cfg_kw
) -> tuple[EvalContext, dict]:
    cfg = Config(outputs_dir=str(tmp_path), run_name=run, bootstrap_samples=200, **cfg_kw)
    paths = RunPaths(tmp_path / run).ensure()
    retrievers = retrievers or {"dense": FakeRetriever(), "bm25": FakeRetriever()}
    ctx = EvalContext(
        cfg,
        paths,
        queries=_queries() if queries is None else queries,
        items=items,
        interactions=INTERACTIONS,
        retrievers=retrievers,
        llm=FakeLLM(),
        tokenizer=FakeTokenizer(),
        store=store,
    )
    ctx.naive_memory_text = lambda row: f"bought {row['user_id']} things"  # type: ignore[method-assign]
    ctx.static_memory_text = lambda row: ""  # type: ignore[method-assign]
    return ctx, retrievers


def _fixed_runner(rank_of: dict[str, str], calls: list | None = None):
    """A runner factory whose text makes FakeRetriever return rank 1 (target id), 500, or any given text."""

    def factory(spec, ctx):
        def run(batch):
            if calls is not None:
                calls.append((spec.name, batch["qid"].tolist()))
            return [
                SystemOutput(
                    qid=q,
                    profile=t if rank_of.get(q) == "hit" else rank_of.get(q, "nothing"),
                    memory_tokens=10,
                )
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
    for mode, expected_rank, alt_rank in (("raw_text", 7.0, math.inf), ("zero", math.inf, 7.0)):
        ctx, _ = _ctx(tmp_path / mode, eval_malformed=mode)
        res = evaluate_systems(ctx.cfg, ctx.paths, ["zeroshot_none"], context=ctx, progress=False)
        df = res.per_query
        bad = df[df["malformed"]]
        assert len(bad) == 3  # every third answer is not boxed
        assert (bad["rank"] == expected_rank).all()
        # the other rule is ranked from the same answers; parsed answers are the same under both rules
        assert (bad["rank_keep_alt"] == alt_rank).all() and (bad["rank_excl_alt"] == alt_rank).all()
        good = df[~df["malformed"]]
        assert (
            (good["rank"] == 1).all()
            and (good["rank_keep_alt"] == 1).all()
            and (good["text"] == good["text_alt"]).all()
        )
        summary = report.system_summary(res)
        assert summary.loc[0, "malformed_rate"] == pytest.approx(0.3)
        if mode == "zero":
            assert (bad[["R@10", "N@1000"]] == 0).all().all()
            assert (bad["text"] == "").all() and (bad["parse_error"] != "").all()
            assert bad["text_alt"].str.startswith("I think item").all()
            case = case_studies(res, ITEMS, n=10, system="zeroshot_none")
            shown = [format_case_study(c) for c in case if c["malformed"]]
            assert len(shown) == 3 and all("nothing was retrieved (scored 0)" in m and "nan" not in m for m in shown)


def test_one_malformed_rule_for_every_llm_row(tmp_path):
    """Zero-shot and trained rows follow `eval_malformed` alike: the policy's raw text is not retrieved under "zero"."""

    def malformed_policy(spec, ctx):
        def run(batch):
            return [
                SystemOutput(qid=q, profile="", final_text=f"maybe {t}", malformed=True, parse_error="no boxed answer")
                for q, t in zip(batch["qid"], batch["target_item_id"], strict=True)
            ]

        return run

    for mode in ("zero", "raw_text"):
        ctx, _ = _ctx(tmp_path / mode, eval_malformed=mode)
        res = evaluate_systems(
            ctx.cfg,
            ctx.paths,
            ["zeroshot_none", "mrrec"],
            context=ctx,
            runners={"policy": malformed_policy},
            progress=False,
        )
        policy = res.system_rows("mrrec")
        assert (policy["rank"] == (math.inf if mode == "zero" else 1)).all()
        assert (policy["rank_keep_alt"] == (1 if mode == "zero" else math.inf)).all()


def test_earlier_items_are_excluded_from_the_ranking(tmp_path):
    texts = {"q00": "i30", "q01": "hit", "q04": "i31", "q05": "i32 5", "q02": "i30"}
    for exclude in (True, False):
        ctx, _ = _ctx(tmp_path / str(exclude), eval_exclude_history=exclude)
        res = evaluate_systems(
            ctx.cfg, ctx.paths, ["mrrec"], context=ctx, runners={"mrrec": _fixed_runner(texts)}, progress=False
        )
        df = res.per_query.set_index("qid")
        # q00 (u0): the text names u0's earlier item i30, which outranked the target -> one rank better without it
        assert df.loc["q00", ["rank_keep", "rank_excl"]].tolist() == [500, 499]
        # q02 (u2) names i30 too, but u2 never bought it; q04 names i31, which u0 bought only after the query
        assert df.loc["q02", "rank_excl"] == 500 and df.loc["q04", "rank_excl"] == 500
        # q05 (u1): i32 (earlier item, score 2) beats the target's number match (score 1, rank 7)
        assert df.loc["q05", ["rank_keep", "rank_excl"]].tolist() == [7, 6]
        assert df.loc["q01", "rank_excl"] == 1 and df.loc["q00", "n_history"] == 1 and df.loc["q03", "n_history"] == 0
        assert (df["rank"] == df["rank_excl" if exclude else "rank_keep"]).all()
        # the headline top items skip earlier purchases when they are excluded
        assert ("i30" in df.loc["q00", "top_items"]) != exclude and "i30" in df.loc["q02", "top_items"]
        rep = report.build_report(res)
        assert rep.metrics["protocol"]["exclude_history"] is exclude
        keep = rep.metrics["settings"]["zero/keep"]["systems"]["mrrec"]["metrics"]["N@1000"]["mean"]
        excl = rep.metrics["settings"]["zero/excl"]["systems"]["mrrec"]["metrics"]["N@1000"]["mean"]
        assert excl > keep


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
    # The cached rows hold every setting: another malformed rule or history setting reuses them.
    ctx4, _ = _ctx(tmp_path, llm_batch_size=4, eval_malformed="raw_text", eval_exclude_history=False)
    res4 = evaluate_systems(ctx4.cfg, ctx4.paths, ["zeroshot_none"], context=ctx4, progress=False)
    assert ctx4.llm.conversations == []
    assert (res4.per_query["rank"] == res1.per_query["rank_keep_alt"]).all()
    # An output-relevant key changes the fingerprint: nothing is reused.
    ctx5, _ = _ctx(tmp_path, llm_batch_size=4, naive_memory_n=3)
    evaluate_systems(ctx5.cfg, ctx5.paths, ["zeroshot_none"], context=ctx5, progress=False)
    assert len(ctx5.llm.conversations) == 10


def test_a_run_takes_the_rows_a_sibling_run_computed_under_the_same_fingerprint(tmp_path):
    ctx, _ = _ctx(tmp_path, llm_batch_size=4)
    first = evaluate_systems(ctx.cfg, ctx.paths, ["zeroshot_none"], context=ctx, progress=False)
    assert first.adopted == {}
    (ctx.paths.logs / "05_eval" / "zeroshot_none-partial.jsonl").write_text("{}\n")  # another name: never read
    ctx2, _ = _ctx(tmp_path, run="s", llm_batch_size=4)
    other = ctx2.paths
    res = evaluate_systems(ctx2.cfg, other, ["zeroshot_none"], context=ctx2, progress=False)
    assert ctx2.llm.conversations == [] and res.adopted == {"zeroshot_none": {"r": 10}}
    assert res.per_query["rank"].tolist() == first.per_query["rank"].tolist()
    assert len(next((other.logs / "05_eval").glob("zeroshot_none-*.jsonl")).read_text().splitlines()) == 10
    # Different inputs (here this run's own data) change the fingerprint: nothing is taken.
    ctx3, _ = _ctx(tmp_path, run="t", llm_batch_size=4)
    third = ctx3.paths
    (third.data / "items.parquet").write_bytes(b"other items")
    res3 = evaluate_systems(ctx3.cfg, third, ["zeroshot_none"], context=ctx3, progress=False)
    assert len(ctx3.llm.conversations) == 10 and res3.adopted == {}


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
    # The row says what it is: the SFT policy, not an RL-trained one.
    label = res.labels["mrrec"]
    assert "SFT only — GRPO kept step 0" in label and "SFT+GRPO" not in label
    assert kept_start_note(label) == "SFT only — GRPO kept step 0" and kept_start_note(res.labels["mrrec_sft"]) == ""
    assert report.build_report(res).table.loc[1, "System"] == label
    # A GRPO step that beat the start is a different policy: it is rolled out.
    write_policy_meta(grpo, base={"which": "sft"}, adapter=True, info={"best_step": 4})
    res = evaluate_systems(ctx.cfg, ctx.paths, ["mrrec_sft", "mrrec"], context=ctx, runners=runners, progress=False)
    assert res.reused == {} and ("mrrec", ctx.queries["qid"].tolist()[:8]) in calls
    assert "SFT+GRPO" in res.labels["mrrec"]


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
    assert list(t.columns[:3]) == ["System", "Memory", "n (req. / users)"]
    assert t.loc[0, "n (req. / users)"] == "10 / 4"
    assert "Snacks (n=5) R@100" in t.columns and "Tea (n=2) N@100" in t.columns
    assert t.loc[0, "R@10"] == "{:.3f} [{:.3f}, {:.3f}]".format(*rep.summary.loc[0, ["R@10", "R@10_lo", "R@10_hi"]])
    assert t.loc[0, "Snacks (n=5) R@100"] == "0.200"
    assert t.loc[0, "Memory"] == "hierarchical + reasoning" and "MR.Rec" in t.loc[0, "System"]
    md = report.to_markdown(t)
    assert md.splitlines()[0].startswith("| System | Memory | n (req. / users) | R@10")
    assert len(md.splitlines()) == 2 + len(t)


def test_paired_test_of_identical_systems_has_zero_difference(tmp_path):
    hits = {"q00": "hit", "q03": "hit", "q07": "hit"}
    res = _two_system_result(tmp_path, hits, hits)
    tests = report.paired_tests(res)
    assert set(tests["metric"]) == {"N@100", "R@100"}
    assert (tests["reference"] == "mrrec").all() and (tests["system"] == "mrrec_sft").all()
    assert (tests["diff"] == 0).all() and (tests["n"] == 10).all() and (tests["n_users"] == 4).all()
    assert (tests["p_permutation"] > 0.5).all() and (tests["p_holm"] >= tests["p_permutation"]).all()
    assert (tests["mdd"] == 0).all()  # no difference anywhere: a zero standard error


def test_paired_test_direction_is_reference_minus_other(tmp_path):
    res = _two_system_result(tmp_path, {f"q{i:02d}": "hit" for i in range(10)}, {})
    tests = report.paired_tests(res).set_index("metric")
    assert tests.loc["R@100", "diff"] == pytest.approx(1.0)  # rank 1 vs rank 500 on every query
    assert tests.loc["N@100", "diff"] == pytest.approx(1.0)
    # 4 users: the user-level sign-flip test has 2^4 = 16 equally likely outcomes, so p can not go below 2/16
    assert tests.loc["N@100", "p_permutation"] == pytest.approx(0.125, abs=0.06)


def test_paired_tests_are_holm_adjusted_per_table_and_report_the_mdd(tmp_path):
    ctx, _ = _ctx(tmp_path)
    hits = {f"q{i:02d}": "hit" for i in range(0, 10, 2)}
    runners = {"mrrec": _fixed_runner(hits), "mrrec_sft": _fixed_runner({}), "recr1": _fixed_runner(hits)}
    res = evaluate_systems(
        ctx.cfg, ctx.paths, ["recr1", "mrrec_sft", "mrrec"], context=ctx, runners=runners, progress=False
    )
    tests = report.paired_tests(res)
    assert len(tests) == 4  # 2 systems x 2 metrics: one family
    np.testing.assert_allclose(tests["p_holm"], stats.holm(tests["p_permutation"]))
    row = tests[(tests["system"] == "mrrec_sft") & (tests["metric"] == "R@100")].iloc[0]
    diffs = np.array([1.0 if i % 2 == 0 else 0.0 for i in range(10)])
    users = [f"u{i % 4}" for i in range(10)]
    assert row["diff"] == pytest.approx(0.5)
    assert row["mdd"] == pytest.approx(stats.min_detectable_difference(diffs, users))
    assert (row["n"], row["n_users"]) == (10, 4)
    shown = report.tests_table(tests)
    assert {"p (Holm)", "MDD (80%)", "n (req. / users)"} <= set(shown.columns)
    assert any(
        "Holm p" in line and "MDD" in line and "4 users" in line for line in report.findings(report.build_report(res))
    )


def test_metrics_record_is_flattened_by_the_ablation_summary(tmp_path):
    from mrrec_lib.ablate import flatten_metrics
    from mrrec_lib.runs import write_json

    res = _two_system_result(tmp_path, {"q00": "hit"}, {})
    rep = report.build_report(res)
    write_json(RunPaths(tmp_path / "r").metrics_file("05_eval"), rep.metrics)
    rows = {r["system"]: r for r in flatten_metrics(tmp_path / "r")}
    assert rows["mrrec"]["R@10"] == pytest.approx(0.1) and "R@10_lo" in rows["mrrec"]
    assert rows["mrrec"]["memory_tokens"] == 10
    m = rep.metrics
    assert m["n_users"] == 4 and m["systems"]["mrrec"]["n_users"] == 4
    assert set(m["settings"]) == {"zero/excl", "zero/keep", "raw_text/excl", "raw_text/keep"}
    assert (
        [k for k, v in m["settings"].items() if v["headline"]] == ["zero/excl"] == [m["protocol"]["headline_setting"]]
    )
    assert set(m["subsets"]) == {"no_overlap", "covered", "uncovered"}
    assert {"n", "n_users", "p_holm", "mdd"} <= set(m["paired_tests"][0])


def test_write_report_outputs(tmp_path):
    res = _two_system_result(tmp_path, {"q00": "hit"}, {})
    rep = report.build_report(res)
    out = report.write_report(rep, res, RunPaths(tmp_path / "r"))
    per_query = pd.read_parquet(out["per_query"])
    assert len(per_query) == 20 and {"qid", "system", "rank", "R@100", "latency_s", "memory_tokens", "profile"} <= set(
        per_query.columns
    )
    assert {"rank_keep", "rank_excl", "rank_keep_alt", "rank_excl_alt", "text_alt", "final_text"} <= set(
        per_query.columns
    )
    assert all(p.exists() for p in out.values())
    md = out["table1_md"].read_text()
    assert "earlier items kept" in md and "Not available: the queries table has no title_overlap" in md
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

    ok = SystemOutput(qid="q", profile="profile", final_text="raw")
    bad = SystemOutput(qid="q", profile="", final_text="raw", malformed=True)
    assert ok.retrieval_text("zero") == ok.retrieval_text("raw_text") == "profile"
    assert bad.retrieval_text("raw_text") == "raw"
    assert bad.retrieval_text("zero") is None
    assert SystemOutput(qid="q", profile="", final_text="  ", malformed=True).retrieval_text("raw_text") is None
    with pytest.raises(ValueError, match="malformed rule"):
        ok.retrieval_text("skip")
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


# ---- reference rows: the SFT teachers' templates -------------------------------------------------


class FakeStore:
    """One pattern entry per looked-up aspect, and two global aspects for every request."""

    cfg = Config()

    def search(self, snapshot, query, k=None, levels=None):
        return [{"entry_id": f"pref:{query}:0", "level": "pattern", "category": "Snacks", "text": f"{query}: crunchy"}]

    def tool_response(self, snapshot, query, k=None):
        return "\n".join(f"[{h['entry_id']}] ({h['level']}) {h['text']}" for h in self.search(snapshot, query, k))

    def global_context(self, query, category=None, k=None):
        return [
            {"aspect": "flavor", "text": "flavor: how it tastes"},
            {"aspect": "price range", "text": "price: budget"},
        ]


def test_template_rows_are_the_sft_teachers_answers_without_an_llm(tmp_path):
    from mrrec_lib.eval.systems import SYSTEMS, template_runner

    ctx, _ = _ctx(tmp_path, store=FakeStore())
    res = evaluate_systems(ctx.cfg, ctx.paths, ["template_recr1", "template_mrrec"], context=ctx, progress=False)
    assert ctx.llm.conversations == [] and res.missing == {}
    recr1 = res.system_rows("template_recr1").set_index("qid")
    assert recr1.loc["q03", "profile"] == "need something like item 3. Category: Snacks."
    assert (recr1["memory_tokens"] == 0).all() and not recr1["malformed"].any()
    mrrec = res.system_rows("template_mrrec").set_index("qid")
    assert not mrrec["malformed"].any()
    assert mrrec["profile"].str.startswith("need something like item").all()
    assert mrrec["profile"].str.contains("This user's preferences: ").all()
    assert mrrec["tool_calls"].between(1, ctx.cfg.max_tool_calls).all()
    assert (mrrec["tool_calls"] == mrrec["tool_queries"].map(len)).all()
    assert all(
        f"pref:{q}:0" in ids for qs, ids in zip(mrrec["tool_queries"], mrrec["memory_ids"], strict=True) for q in qs
    )
    assert (mrrec["memory_tokens"] > mrrec["memory_tokens_global"]).all() and (mrrec["memory_tokens_global"] > 0).all()
    # a query's scripted answer does not depend on its batch
    run = template_runner(SYSTEMS["template_mrrec"], ctx)
    alone = {o.qid: o.profile for o in run(ctx.queries.iloc[5:6])}
    assert alone["q05"] == mrrec.loc["q05", "profile"]
    summary = report.system_summary(res).set_index("system")
    assert summary.loc["template_recr1", "method"].startswith("Template: request + category")
    assert summary.loc["template_mrrec", "memory"] == "hierarchical, scripted lookups"
    assert report.build_report(res).metrics["protocol"]["reference_rows"] == ["template_recr1", "template_mrrec"]


def test_default_systems_include_the_reference_templates():
    names = [s.name for s in resolve_systems(Config().eval_systems)]
    assert {"template_recr1", "template_mrrec"} <= set(names)


# ---- subsets: no title overlap, covered / uncovered categories ---------------------------------------


def test_subsets_no_overlap_and_distractor_coverage(tmp_path):
    queries = _queries().assign(title_overlap=[0, 1, 0, 2, 0, 0, 1, 0, 0, 3] * 2)
    items = pd.concat(
        [
            ITEMS.assign(source="amazon2023"),
            pd.DataFrame({"item_id": ["dx:1"], "title": ["A tea"], "category": ["Tea"], "source": ["distractor:x"]}),
        ],
        ignore_index=True,
    )
    ctx, _ = _ctx(tmp_path, queries=queries, items=items)
    hits = {f"q{i:02d}": "hit" for i in (0, 2, 8)}
    runners = {"mrrec": _fixed_runner(hits), "mrrec_sft": _fixed_runner({})}
    res = evaluate_systems(ctx.cfg, ctx.paths, ["mrrec_sft", "mrrec"], context=ctx, runners=runners, progress=False)
    assert res.covered_categories == ["Tea"] and "title_overlap" in res.per_query.columns
    rep = report.build_report(res)
    sub = rep.metrics["subsets"]
    no = sub["no_overlap"]
    assert no["available"] and no["n_requests"] == 6 and no["n_users"] == 4
    assert no["systems"]["mrrec"]["metrics"]["R@10"]["mean"] == pytest.approx(3 / 6)  # q00, q02, q08 of 6
    assert sub["covered"]["n_requests"] == 2 and sub["covered"]["covered_categories"] == ["Tea"]
    assert sub["uncovered"]["n_requests"] == 8
    assert sub["covered"]["systems"]["mrrec"]["metrics"]["R@10"]["mean"] == pytest.approx(1 / 2)  # q08 of q08, q09
    assert {t["n"] for t in sub["covered"]["paired_tests"]} == {2}
    tables = dict((b.key, t) for b, t in rep.block_tables("subset:"))
    assert tables["subset:covered"].loc[1, "n (req. / users)"] == "2 / 2"


def test_missing_title_overlap_skips_that_table(tmp_path):
    res = _two_system_result(tmp_path, {"q00": "hit"}, {})
    rep = report.build_report(res)
    no = rep.metrics["subsets"]["no_overlap"]
    assert not no["available"] and "title_overlap" in no["reason"] and "systems" not in no
    assert rep.metrics["subsets"]["covered"]["n_requests"] == 0  # no distractors in this pool
    assert rep.metrics["subsets"]["uncovered"]["n_requests"] == 10


def test_pool_curve_of_every_row_ends_at_the_table_number(tmp_path):
    from mrrec_lib.eval.pool_eval import result_pool_curve
    from mrrec_lib.retrieval.items import ItemRetriever

    words = ["green", "black", "herbal", "mint", "chai", "oolong"]
    items = pd.concat(
        [
            ITEMS.assign(text=[f"item {i} {words[i % 6]} tea" for i in range(40)], source="amazon2023"),
            pd.DataFrame(
                {
                    "item_id": [f"dx{j}" for j in range(20)],
                    "title": "x",
                    "category": "Tea",
                    "text": [f"{words[j % 6]} tea {j}" for j in range(20)],
                    "source": "distractor:x",
                }
            ),
        ],
        ignore_index=True,
    )
    bm25 = ItemRetriever(items, None, Config(), "bm25")
    retrievers = {"dense": bm25, "bm25": bm25}
    ctx, _ = _ctx(
        tmp_path, items=items, retrievers=retrievers, eval_exclude_history=False, eval_pool_fractions=[0, 0.5, 1]
    )
    res = evaluate_systems(ctx.cfg, ctx.paths, ["query_bm25", "template_recr1"], context=ctx, progress=False)
    curve = result_pool_curve(res, ctx)
    assert set(curve["system"]) == {"query_bm25", "template_recr1"}
    assert sorted(curve["pool_size"].unique()) == [40, 50, 60]
    end = curve[(curve["fraction"] == 1.0) & (curve["metric"] == "N@10")].set_index("system")["mean"]
    table = report.system_summary(res).set_index("system")["N@10"]
    assert end.to_dict() == pytest.approx(table.to_dict())


def test_memory_label_names_the_memory_an_mrrec_row_was_given():
    from mrrec_lib.eval.systems import SYSTEMS, memory_label

    mrrec, template = SYSTEMS["mrrec"], SYSTEMS["template_mrrec"]
    assert memory_label(mrrec, Config()) == "hierarchical + reasoning"
    assert memory_label(mrrec, Config(local_memory=False)) == "global + reasoning"
    assert memory_label(mrrec, Config(global_memory=False)) == "local (record, pattern, profile) + reasoning"
    assert memory_label(mrrec, Config(memory_levels=["pattern"])) == "local (pattern) + global + reasoning"
    assert memory_label(mrrec, Config(local_memory=False, global_memory=False)) == "no memory + reasoning"
    assert memory_label(template, Config(local_memory=False)) == "hierarchical, scripted lookups"
    assert memory_label(SYSTEMS["zeroshot_naive"], Config()) == "naive (recent 10)"
