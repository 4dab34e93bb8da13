"""Splits, the leakage check, schema validation, query building and prepare_data end to end."""

from pathlib import Path

import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.data import SchemaError, history_for, leakage_report, load_data, prepare_data, validate
from mrrec_lib.data.queries import build_queries, clean_llm_output, extractive_request
from mrrec_lib.data.sources.base import targets_frame
from mrrec_lib.data.splits import assign_splits
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
        "category": "Grocery", "subcategory": "Beverages", "noun_hint": "black tea", "item_title": "TeaCo Black Tea",
        "store": "TeaCo", "raw_query": "", "rule": "heldout", "source": "s",
    }  # fmt: skip
    row.update(kw)
    return row


def test_extractive_request_keeps_kind_and_use_case_drops_brand_and_numbers():
    raw, simple = extractive_request(_target())
    assert simple == "I need a black tea for my morning routine with spoons of honey."
    assert "teaco" not in raw.lower() and "$" not in raw and "2" not in raw
    _, fallback = extractive_request(_target(noun_hint="", item_title="", review_text="Love it", category="All Beauty"))
    assert fallback == "I need a beauty product."


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
    return Config(
        outputs_dir=str(tmp_path),
        run_name="fx",
        shared_data_dir=str(FIX),
        agenticshop_files=["agenticshop_tiny.json"],
        amazon2023_reviews_files=["amazon2023_tiny.jsonl"],
        amazon2023_titles_files=[],
        amazon_c4_queries_path=str(FIX / "c4_test.csv"),
        amazon_c4_items_path=str(FIX / "c4_items.jsonl"),
        amazon_reviews_dir=str(FIX / "amazon_reviews"),
        min_history=2,
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
    assert not list(paths.data.glob(".*tmp"))


def test_prepare_data_max_queries_and_unknown_source(tmp_path):
    metrics = prepare_data(_fixture_cfg(tmp_path, max_queries=2), RunPaths(tmp_path / "fx").ensure())
    assert metrics["counts"]["queries"] == 2 and metrics["dropped"]["queries/over_max_queries"] >= 1
    with pytest.raises(ValueError, match="unknown source"):
        prepare_data(_fixture_cfg(tmp_path, sources=["nope"]), RunPaths(tmp_path / "fx"))


def test_prepare_data_on_the_shared_real_sets(tmp_path, shared_data):
    cfg = Config(outputs_dir=str(tmp_path), run_name="real", shared_data_dir=str(shared_data), max_users=40)
    paths = RunPaths(tmp_path / "real").ensure()
    metrics = prepare_data(cfg, paths)
    assert metrics["leakage_violations"] == 0
    assert set(metrics["per_source"]) == {"agenticshop", "amazon2023_reviews"}
    items, inter, queries = load_data(paths)
    # re-run the check from the written tables: later stages do the same
    assert leakage_report(items, inter, queries, cfg.leakage_min_words)["leakage_violations"] == 0
