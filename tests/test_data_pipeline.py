"""Splits, the leakage check, schema validation, query building and prepare_data end to end."""

from pathlib import Path

import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.data import SchemaError, history_for, leakage_report, load_data, prepare_data, validate
from mrrec_lib.data.queries import build_queries, clean_llm_output
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.sources.base import SourceData, targets_frame
from mrrec_lib.data.splits import assign_sized_splits, assign_splits
from mrrec_lib.data.target_filters import drop_repurchases, one_source_per_user
from mrrec_lib.data.text import stable_id
from mrrec_lib.runs import MissingStageError, RunPaths

FIX = Path(__file__).parent / "fixtures" / "data"
LONG = "This brush is perfect for detangling my wet hair after the shower without any pulling."


def _tables():
    items = pd.DataFrame(
        {
            "item_id": ["I1", "I2", "I3"],
            "category": ["Beauty"] * 3,
            "subcategory": [""] * 3,
            "title": ["Brush", "Comb", "Gel"],
            "description": [""] * 3,
            "store": [""] * 3,
            "price": [float("nan")] * 3,
            "text": ["Brush\nReview: Solid brush.", "Comb", "Gel"],
            "source": ["t"] * 3,
        }
    )
    inter = pd.DataFrame(
        {
            "user_id": ["A", "A", "A", "B"],
            "item_id": ["I2", "I3", "I1", "I1"],
            "rating": [5.0, 4.0, 5.0, 4.0],
            "review_title": [""] * 4,
            "review_text": ["Nice comb.", "Good gel.", LONG, "Solid brush."],
            "timestamp": [1, 2, 3, 1],
            "category": ["Beauty"] * 4,
            "source": ["t"] * 4,
        }
    )
    queries = pd.DataFrame(
        {
            "qid": ["qa"],
            "user_id": ["A"],
            "target_item_id": ["I1"],
            "category": ["Beauty"],
            "raw_query": ["r"],
            "query": ["q"],
            "split": ["test"],
            "target_timestamp": [3],
            "query_builder": ["extractive"],
            "source": ["t"],
            "title_overlap": [0],
            "title_overlap_raw": [0],
        }
    )
    return validate(items, "items"), validate(inter, "interactions"), validate(queries, "queries")


def test_leakage_report_clean_tables_report_zero():
    report = leakage_report(*_tables())
    assert report["leakage_violations"] == 0 and report["queries_checked"] == 1


def test_leakage_report_finds_each_kind_of_leak():
    items, inter, queries = _tables()
    leaky_items = items.copy()
    leaky_items.loc[1, "text"] = "Comb\nReview: " + LONG[:70] + " ..."  # trimmed copy of the target review
    assert leakage_report(leaky_items, inter, queries)["target_in_item_text"] == 1

    leaky_inter = pd.concat([inter, inter.iloc[[2]].assign(item_id="I2", timestamp=0)], ignore_index=True)
    assert leakage_report(items, leaky_inter, queries)["target_in_history"] == 1

    missing = queries.assign(target_timestamp=9)
    assert leakage_report(items, inter, missing)["target_review_missing"] == 1

    two = pd.concat([queries, queries.assign(qid="qb", split="train", target_timestamp=2, target_item_id="I3")])
    assert leakage_report(items, inter, two)["users_in_several_splits"] == 1

    # a repurchase: A reviewed the target item I1 before (a different review, so no text leak)
    bought = pd.concat([inter, inter.iloc[[0]].assign(item_id="I1", timestamp=0)], ignore_index=True)
    report = leakage_report(items, bought, queries)
    assert report["target_item_in_history"] == 1 and report["target_in_history"] == 0
    assert report["leakage_violations"] == 1 and report["examples"]["target_item_in_history"] == ["qa"]

    memory = pd.DataFrame({"user_id": ["A"], "target_timestamp": [3], "text": [f"pref: {LONG}"]})
    report = leakage_report(items, inter, queries, memory=memory)
    assert report["target_in_memory"] == 1 and report["leakage_violations"] == 1


def test_short_target_leaks_only_by_equality():
    items, inter, queries = _tables()
    inter.loc[2, "review_text"] = "Solid brush."  # a short target that B also wrote, and that I1's text quotes
    assert leakage_report(items, inter, queries)["target_in_item_text"] == 1
    items.loc[0, "text"] = "Brush. A solid brush for every day."
    assert leakage_report(items, inter, queries)["target_in_item_text"] == 0


def test_history_for_is_strictly_before():
    _, inter, _ = _tables()
    assert list(history_for(inter, "A", 3)["item_id"]) == ["I2", "I3"]
    assert history_for(inter, "A", 1).empty


def test_splits_by_user_seeded_and_stratified():
    q = pd.DataFrame({"user_id": [f"u{i // 2}" for i in range(200)], "source": ["s1"] * 100 + ["s2"] * 100})
    a = assign_splits(q, [0.6, 0.2, 0.2], seed=1)
    assert (a.groupby(q["user_id"]).nunique() == 1).all()
    assert a.equals(assign_splits(q, [0.6, 0.2, 0.2], seed=1))
    assert not a.equals(assign_splits(q, [0.6, 0.2, 0.2], seed=2))
    for source in ("s1", "s2"):
        users = q[q.source == source].assign(split=a).drop_duplicates("user_id")["split"].value_counts()
        assert users.to_dict() == {"train": 30, "val": 10, "test": 10}
    with pytest.raises(ValueError, match="split_ratios"):
        assign_splits(q, [0.5, 0.5], seed=1)


def test_sized_splits_draw_whole_users_until_each_split_is_full():
    sizes = [1, 2, 3, 4, 5] * 20  # 100 users, 300 requests
    q = pd.DataFrame({"user_id": [f"u{i}" for i, n in enumerate(sizes) for _ in range(n)]})
    a = assign_sized_splits(q, test_queries=120, val_queries=40, seed=3)
    assert (a.groupby(q["user_id"]).nunique() == 1).all()
    counts = a.value_counts()
    # each split stops at the user that fills it: at most one user's requests (<= 5) over its size
    assert 120 <= counts["test"] < 125 and 40 <= counts["val"] < 45
    assert counts["train"] == len(q) - counts["test"] - counts["val"]
    assert a.equals(assign_sized_splits(q, 120, 40, seed=3)) and not a.equals(assign_sized_splits(q, 120, 40, seed=4))
    with pytest.raises(ValueError, match="split_test_queries=290 and split_val_queries=40"):
        assign_sized_splits(q, 290, 40, seed=3)


def test_schema_names_missing_columns_and_broken_records():
    items, inter, queries = _tables()
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['text'\]"):
        validate(items.drop(columns="text"), "items", "x.parquet")
    with pytest.raises(SchemaError, match="'item_id' is empty in record 1"):
        validate(items.assign(item_id=["I1", "", "I3"]), "items")
    with pytest.raises(SchemaError, match="'timestamp', record 0"):
        validate(inter.assign(timestamp=["soon", 2, 3, 1]), "interactions")
    with pytest.raises(SchemaError, match="duplicate record"):
        validate(pd.concat([queries, queries]), "queries")
    with pytest.raises(SchemaError, match="split 'dev'"):
        validate(queries.assign(split="dev"), "queries")


def _target(**kw):
    row = {
        "qid": "q1", "user_id": "u", "item_id": "i", "timestamp": 5, "rating": 5.0, "review_title": "",
        "review_text": "Great brand new TeaCo tea. I use it for my morning routine with 2 spoons of honey, $12.",
        "category": "Grocery", "raw_query": "", "rule": "heldout", "source": "s",
    }  # fmt: skip
    row.update(kw)
    return row


class FakeLLM:
    name = "fake"

    def __init__(self, replies):
        self.replies = replies
        self.prompts = []

    def chat(self, conversations, sampling, n=1):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [[self.replies(c[-1]["content"])] for c in conversations]


def test_llm_builder_uses_good_output_and_falls_back_on_garbage():
    targets = targets_frame(
        [
            _target(),
            _target(qid="q2", review_text="Cute mug for coffee."),
            _target(qid="q3", raw_query="I need a tent for camping. It must be light. Budget $200.", rule="c4"),
        ]
    )

    def replies(prompt):
        if "Cute mug" in prompt:
            return "<|im_start|>{{"  # garbage: falls back to extractive
        if prompt.startswith("Rewrite"):
            return "Sentence: I want something cozy to sip tea in the morning."
        return "I'm after a loose-leaf tea for my mornings, nothing too strong."

    llm = FakeLLM(replies)
    cfg = Config(query_builder="llm")
    out, counts = build_queries(targets, cfg, llm_factory=lambda _: llm)
    by = out.set_index("qid")
    assert by.loc["q1", "query_builder"] == "llm"
    assert by.loc["q1", "query"] == "I want something cozy to sip tea in the morning."
    assert by.loc["q2", "query_builder"] == "extractive" and counts["llm_request_fallback"] == 1
    assert by.loc["q3", "query_builder"] == "llm" and by.loc["q3", "raw_query"].startswith("I need a tent")
    assert clean_llm_output("", 40) is None and clean_llm_output("ok", 40) is None
    assert clean_llm_output("I'm sorry for the confusion, but I'd be happy to help you with that.", 40) is None
    review = "I drink it for my morning routine with a little honey and milk."
    assert clean_llm_output("I want a tea for my morning routine with a little honey", 40, avoid=review) is None
    assert clean_llm_output("I want a tea for slow mornings", 40, avoid=review) == "I want a tea for slow mornings"


def test_c4_queries_kept_with_rule_simplification_by_extractive_builder():
    out, _ = build_queries(targets_frame([_target(raw_query="I need a tent for camping. It must be light.")]), Config())
    assert out["query"].iloc[0] == "I need a tent for camping." and out["query_builder"].iloc[0] == "c4"


def _fixture_cfg(tmp_path, **kw) -> Config:
    kw.setdefault("sources", ["agenticshop", "amazon2023_reviews", "amazon_c4"])
    kw.setdefault("query_builder", "extractive")  # most fixture targets have no shared request
    kw.setdefault("min_history", 2)
    return Config(
        outputs_dir=str(tmp_path),
        run_name="fx",
        shared_data_dir=str(FIX),
        agenticshop_files=["agenticshop_tiny.json"],
        amazon2023_reviews_files=["amazon2023_tiny.jsonl"],
        amazon2023_titles_files=[],
        amazon2023_multicat_files=["multicat_tiny.jsonl"],
        shared_requests_files=["requests_tiny.jsonl"],
        amazon_c4_queries_path=str(FIX / "c4_test.csv"),
        amazon_c4_items_path=str(FIX / "c4_items.jsonl"),
        amazon_reviews_dir=str(FIX / "amazon_reviews"),
        split_test_queries=0,  # a handful of requests: split_ratios
        pool_distractors=False,
        **kw,
    )


def test_prepare_data_combines_sources_and_round_trips(tmp_path):
    cfg = _fixture_cfg(tmp_path)
    paths = RunPaths(tmp_path / "fx").ensure()
    with pytest.raises(MissingStageError):
        load_data(paths)
    metrics = prepare_data(cfg, paths)
    items, inter, queries = load_data(paths)
    assert metrics["leakage_violations"] == 0
    assert set(queries["source"]) == {"agenticshop", "amazon2023_reviews", "amazon_c4"}
    assert metrics["counts"]["queries"] == len(queries) and metrics["pool_size"] == len(items)
    assert sum(metrics["queries_per_rule"].values()) == len(queries)
    assert queries["target_item_id"].isin(items["item_id"]).all()
    assert (queries.groupby("user_id")["split"].nunique() == 1).all()
    assert metrics["dropped"]["amazon2023_reviews/malformed_json"] == 1
    assert set(inter["user_id"]) == set(queries["user_id"])
    assert metrics["split_mode"] == "ratios" and metrics["pool"] == {"enabled": False}
    # every source names its category as Amazon 2023's files do; agenticshop's is its file's stem
    assert set(items.loc[items.source == "agenticshop", "category"]) == {"agenticshop_tiny"}
    assert set(items.loc[items.source == "amazon2023_reviews", "category"]) == {"All_Beauty"}
    assert items.loc[items.source == "agenticshop", "subcategory"].eq("Beverages").any()
    assert items.loc[items.source == "amazon2023_reviews", "text"].str.contains("Category: All Beauty").all()
    assert not list(paths.data.glob(".*tmp"))


def test_prepare_data_max_queries_and_unknown_source(tmp_path):
    metrics = prepare_data(_fixture_cfg(tmp_path, max_queries=2), RunPaths(tmp_path / "fx").ensure())
    assert metrics["counts"]["queries"] == 2 and metrics["dropped"]["queries/over_max_queries"] >= 1
    with pytest.raises(ValueError, match="unknown source"):
        prepare_data(_fixture_cfg(tmp_path, sources=["nope"]), RunPaths(tmp_path / "fx"))


def test_prepare_data_shared_requests_on_multicat_and_agenticshop(tmp_path):
    cfg = _fixture_cfg(tmp_path, sources=["amazon2023_multicat", "agenticshop"], query_builder="shared", min_history=1)
    paths = RunPaths(tmp_path / "fx").ensure()
    metrics = prepare_data(cfg, paths)
    _, _, queries = load_data(paths)
    got = {(q.user_id, q.target_item_id) for q in queries.itertuples()}
    assert got == {
        ("U1", "G2"),
        ("U1", "T3"),
        ("U4", "E4"),
        ("U_GOOD", stable_id("Rose Petal Black Tea", "Tao Tea", prefix="as-")),
    }
    assert set(queries["query_builder"]) == {"shared"}
    q = queries.set_index("target_item_id")
    assert q.loc["G2", "query"] == "a crunchy snack for my kids' lunch boxes"
    # "crunchy" is in the title "Crunchy Veggie Straws, 12 Pack"; the raw request also says "crunchy"
    assert (q.loc["G2", "title_overlap"], q.loc["G2", "title_overlap_raw"]) == (1, 1)
    assert queries["title_overlap"].dtype == "int64" and queries["title_overlap_raw"].dtype == "int64"
    assert metrics["dropped"]["queries/no_shared_request"] >= 2  # G3 and U2's P1
    assert metrics["dropped"]["shared_requests/user_not_loaded"] == 1  # U9 is in no loaded file
    assert metrics["shared_requests"]["matched"] == 4
    assert 0 <= metrics["title_overlap_rate"] <= 1 and "title_overlap_rate_extractive" in metrics
    assert set(metrics["title_overlap_per_source"]) == {"amazon2023_multicat", "agenticshop"}
    assert metrics["leakage"]["target_item_in_history"] == 0 and metrics["leakage_violations"] == 0


def test_prepare_data_drops_repurchases(tmp_path):
    cfg = _fixture_cfg(tmp_path, sources=["amazon2023_multicat"], min_history=1)
    metrics = prepare_data(cfg, RunPaths(tmp_path / "fx").ensure())
    assert metrics["dropped"]["queries/target_is_repurchase"] == 1  # U2 bought P1 again
    assert metrics["dropped_examples"]["queries/target_is_repurchase"] == ["amazon2023_multicat:U2:30"]
    assert metrics["repurchases_dropped"] == {"total": 1, "per_source": {"amazon2023_multicat": 1}}
    assert metrics["leakage"]["target_item_in_history"] == 0


def test_drop_repurchases_only_earlier_purchases_count():
    targets = targets_frame([_target(qid="a", item_id="i", timestamp=5), _target(qid="b", item_id="j", timestamp=5)])
    inter = pd.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["i", "i", "j"], "timestamp": [5, 2, 9]})
    skips = SkipLog()
    kept = drop_repurchases(targets, inter, skips)
    assert list(kept["qid"]) == ["b"] and skips.counts["queries/target_is_repurchase"] == 1  # j only later


def test_a_user_in_two_sources_stays_where_most_of_their_targets_are():
    def part(source, users_targets):
        inter = pd.DataFrame({"user_id": [u for u, _ in users_targets], "item_id": "x", "timestamp": 1})
        rows = [_target(qid=f"{source}:{u}:{k}", user_id=u, source=source) for u, n in users_targets for k in range(n)]
        return SourceData(pd.DataFrame(), inter, targets_frame(rows))

    parts = {"first": part("first", [("A", 1), ("B", 1)]), "second": part("second", [("A", 2), ("B", 1)])}
    targets = pd.concat([p.targets for p in parts.values()], ignore_index=True)
    skips = SkipLog()
    out = one_source_per_user(parts, targets, skips)
    assert set(out["first"].targets["user_id"]) == {"B"}  # tie: config order
    assert set(out["second"].targets["user_id"]) == {"A"} and len(out["second"].targets) == 2
    assert set(out["first"].interactions["user_id"]) == {"B"}
    assert skips.counts["first/user_in_other_source"] == 1 and skips.counts["second/user_in_other_source"] == 1


def test_prepare_data_default_config_on_the_shared_real_data(tmp_path, shared_data):
    """The default benchmark (shared requests, sized splits) on the real shared data; distractors off for speed.

    Measured 2026-12-03: 1,312 requests, 344 users, 24 categories, test 801 / val 101 requests. At most 351
    distinct users hold a shared request whose target survives the loaders (Beauty: 47 of 229, the others'
    items have no text but the target's own review); dropping repurchases (5 single-request users) and the
    two requests whose review quotes the product title leaves 344, so 350 users is out of reach.
    """
    cfg = Config(outputs_dir=str(tmp_path), run_name="real", shared_data_dir=str(shared_data), pool_distractors=False)
    paths = RunPaths(tmp_path / "real").ensure()
    metrics = prepare_data(cfg, paths)
    assert metrics["leakage_violations"] == 0 and metrics["leakage"]["target_item_in_history"] == 0
    counts = metrics["counts"]
    assert counts["queries"] >= 1200 and counts["users"] >= 340 and counts["categories"] >= 15
    assert set(metrics["per_source"]) == {"amazon2023_multicat", "agenticshop", "amazon2023_reviews"}
    assert metrics["queries_per_split"]["test"] >= 800 and metrics["queries_per_split"]["val"] >= 100
    assert metrics["queries_per_builder"] == {"shared": counts["queries"]}
    assert 0.5 < metrics["title_overlap_rate"] < 0.95 and metrics["title_overlap_rate_extractive"] < 0.6
    items, inter, queries = load_data(paths)
    # re-run the check from the written tables: later stages do the same
    assert leakage_report(items, inter, queries, cfg.leakage_min_words)["leakage_violations"] == 0
