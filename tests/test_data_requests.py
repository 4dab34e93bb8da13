"""Requests: the shared C4-style requests join, title overlap, builders that never see the target item,
and the builder-quality tables against real Amazon-C4 pairs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.data.overlap import content_words, overlap_rate, title_overlap
from mrrec_lib.data.queries import BUILDER_FIELDS, build_queries, extractive_request
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.request_quality import builder_vs_c4, c4_test_pairs, review_word_share, run_request_stats
from mrrec_lib.data.shared_requests import SharedRequestsError, join_shared_requests, read_requests
from mrrec_lib.data.sources.base import targets_frame

FIX = Path(__file__).parent / "fixtures" / "data"


def _target(**kw):
    row = {
        "qid": "q1", "user_id": "U1", "item_id": "G2", "timestamp": 300, "rating": 5.0, "review_title": "Yum",
        "review_text": "My kids love these crunchy snacks in their lunch boxes.", "category": "Grocery_and_Gourmet_Food",
        "raw_query": "", "rule": "review", "source": "amazon2023_multicat",
    }  # fmt: skip
    row.update(kw)
    return row


def _cfg(**kw) -> Config:
    kw.setdefault("shared_requests_files", ["requests_tiny.jsonl"])
    return Config(shared_data_dir=str(FIX), **kw)


# ---- shared requests ----------------------------------------------------------------------------


def test_shared_requests_join_on_user_item_and_time_and_report_the_rest():
    targets = targets_frame(
        [
            _target(),
            _target(qid="q2", item_id="T3", timestamp=400),
            _target(qid="q3", item_id="G2", timestamp=301),  # same user and item, another time: no request
            _target(qid="q4", user_id="U_GOOD", item_id="as-x", timestamp=14, source="agenticshop"),
            _target(qid="q5", raw_query="I need a tent for camping.", rule="c4", source="amazon_c4"),
        ]
    )
    skips = SkipLog()
    out, report = join_shared_requests(targets, _cfg(sources=["amazon2023_multicat", "agenticshop"]), skips)
    by = out.set_index("qid")
    assert list(by.index) == ["q1", "q2", "q4", "q5"]
    assert by.loc["q1", "shared_simple_request"] == "a crunchy snack for my kids' lunch boxes"
    assert by.loc["q4", "shared_request"].startswith("I'd like a fragrant black tea")  # agenticshop: user_id alone
    assert by.loc["q5", "shared_request"] == ""  # a source request (Amazon-C4) passes through
    assert skips.counts["queries/no_shared_request"] == 1 and skips.examples["queries/no_shared_request"] == ["q3"]
    # U4's request has no target here, U9's has none anywhere: counted and reported with file:line, never silent
    assert skips.counts["shared_requests/request_without_target"] == 2
    assert report["matched"] == 3 and report["unmatched"] == 2 and report["requests"] == 5
    assert report["unmatched_per_reason"] == {"request_without_target": 2}
    assert any("requests_tiny.jsonl:4" in e for e in report["unmatched_examples"]["amazon2023_multicat"])
    assert report["per_source"]["amazon2023_multicat"] == {
        "requests": 4,
        "matched": 2,
        "unmatched": 2,
        "targets_without_request": 1,
    }


def test_shared_requests_of_sources_not_loaded_are_counted_apart():
    skips = SkipLog()
    join_shared_requests(targets_frame([_target()]), _cfg(sources=["amazon2023_multicat"]), skips)
    assert skips.counts["shared_requests/source_not_loaded"] == 1  # the agenticshop line
    assert skips.counts["shared_requests/request_without_target"] == 3


def test_shared_requests_of_users_not_loaded_are_counted_apart():
    skips = SkipLog()
    loaded = {"amazon2023_multicat": {"U1", "U4"}, "agenticshop": {"U_GOOD"}}
    _, report = join_shared_requests(targets_frame([_target()]), _cfg(), skips, loaded)
    assert skips.counts["shared_requests/user_not_loaded"] == 1  # U9, e.g. left out by max_users
    assert skips.counts["shared_requests/request_without_target"] == 3  # T3, E4, U_GOOD: loaded, no such target
    assert report["unmatched_per_reason"] == {"request_without_target": 3, "user_not_loaded": 1}


def test_shared_requests_no_match_at_all_is_an_error():
    with pytest.raises(SharedRequestsError, match="none of the 5 shared requests"):
        join_shared_requests(targets_frame([_target(user_id="nobody")]), _cfg(), SkipLog())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{broken", r"bad\.jsonl:2: not valid JSON"),
        (json.dumps({"source": "amazon2023_multicat", "user_id": "u"}), r"bad\.jsonl:2: missing field\(s\) \['parent_asin'"),
        (
            json.dumps({"source": "elsewhere", "user_id": "u", "parent_asin": "", "timestamp": 0, "request": "r",
                        "simple_request": "s"}),
            r"bad\.jsonl:2: unknown source 'elsewhere'",
        ),
        (
            json.dumps({"source": "agenticshop", "user_id": "u", "parent_asin": "", "timestamp": 0, "request": " ",
                        "simple_request": "s"}),
            r"bad\.jsonl:2: field 'request' is empty",
        ),
        (
            json.dumps({"source": "agenticshop", "user_id": "U_GOOD", "parent_asin": "", "timestamp": 0,
                        "request": "again", "simple_request": "s"}),
            r"bad\.jsonl:2: same join key .* as .*bad\.jsonl:1",
        ),
    ],
)  # fmt: skip
def test_shared_requests_malformed_line_names_file_and_line(tmp_path, line, message):
    first = (FIX / "requests_tiny.jsonl").read_text().splitlines()[-1]  # the agenticshop U_GOOD line
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{first}\n{line}\n")
    with pytest.raises(SharedRequestsError, match=message):
        read_requests([path])


def test_shared_builder_uses_the_joined_requests_and_c4_keeps_its_own():
    targets = targets_frame(
        [_target(), _target(qid="q5", raw_query="I need a tent for camping. It must be light.", rule="c4")]
    )
    joined, _ = join_shared_requests(targets, _cfg(), SkipLog())
    out, _ = build_queries(joined, _cfg())
    by = out.set_index("qid")
    assert by.loc["q1", "query_builder"] == "shared"
    assert by.loc["q1", "query"] == "a crunchy snack for my kids' lunch boxes"
    assert by.loc["q1", "raw_query"].startswith("I'm looking for a crunchy snack")
    assert (by.loc["q5", "query_builder"], by.loc["q5", "query"]) == ("c4", "I need a tent for camping.")
    with pytest.raises(KeyError, match="join the requests first"):
        build_queries(targets, _cfg())


# ---- title overlap -----------------------------------------------------------------------------------


def test_title_overlap_counts_content_words_only():
    assert content_words("I'm looking for the best 2 Notebooks, for school!") == {"notebook", "school"}
    title = "Five Star Spiral Notebooks, College Ruled, 3 Pack"
    assert title_overlap("a notebook for school", title) == 1  # plural folded
    assert title_overlap("I need something for my class", title) == 0  # stopwords and short words do not count
    assert title_overlap("spiral ruled notebooks for college", title) == 4
    assert title_overlap("anything", "") == 0
    assert overlap_rate(pd.Series([0, 1, 3, 0])) == 0.5 and overlap_rate(pd.Series([], dtype=int)) == 0.0


# ---- builders never see the target item ------------------------------------------------------------


class _ReviewOnly(dict):
    """A target that fails the test as soon as a builder reads anything but the review fields."""

    def __getitem__(self, key):
        if key not in BUILDER_FIELDS:
            raise AssertionError(f"a request builder read the target's {key!r}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def test_extractive_builder_reads_only_the_review():
    review = "This tea from TeaCo is lovely. I use it for my morning routine with 2 spoons of honey, $12."
    target = _ReviewOnly(
        _target(review_text=review, review_title="", category="Grocery_and_Gourmet_Food")
        | {"item_title": "Zanzibar Smoky Lapsang Souchong", "store": "TeaCo", "subcategory": "Tea", "noun_hint": "x"}
    )
    raw, simple = extractive_request(target)
    assert simple == "I need a tea for my morning routine with spoons of honey."
    assert "$" not in raw and "2" not in raw
    _, fallback = extractive_request(
        _ReviewOnly(_target(review_text="Love it", review_title="", category="All_Beauty"))
    )
    assert fallback == "I need a beauty product."
    # the same review under any other title gives the same request: the title is never read
    base = targets_frame([_target(review_text=review)])
    a, _ = build_queries(base.assign(item_title="Zanzibar Lapsang"), Config(query_builder="extractive"))
    b, _ = build_queries(base.assign(item_title="Quokka Oolong"), Config(query_builder="extractive"))
    assert a["query"].equals(b["query"]) and "zanzibar" not in a["query"].iloc[0].lower()


def test_extractive_product_kind_from_the_review_title_or_the_review():
    assert extractive_request(_target(review_title="Great coffee maker!", review_text="Works fine."))[1] == (
        "I need a coffee maker."
    )
    assert extractive_request(_target(review_title="Five Stars", review_text="Nice little case, holds my cards."))[
        1
    ] == ("I need a case.")


class FakeLLM:
    name = "fake"

    def __init__(self):
        self.prompts = []

    def chat(self, conversations, sampling, n=1):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [["I want a calming tea for my evenings at home."] for _ in conversations]


def test_llm_builder_prompt_holds_no_item_field():
    targets = targets_frame([_target(review_text="Lovely tea, I drink it every evening.")]).assign(
        item_title="Zanzibar Lapsang", store="TeaCo", subcategory="Black Tea"
    )
    llm = FakeLLM()
    out, _ = build_queries(targets, Config(query_builder="llm"), llm_factory=lambda _: llm)
    assert out["query_builder"].iloc[0] == "llm" and llm.prompts
    for prompt in llm.prompts:
        assert not any(word in prompt for word in ("Zanzibar", "TeaCo", "Black Tea"))
    assert "Grocery and Gourmet Food" in llm.prompts[0] and "Lovely tea" in llm.prompts[0]


# ---- builder quality vs real Amazon-C4 ---------------------------------------------------------------


class FakeEncoder:
    """Bag-of-letters vectors: deterministic, no model."""

    def encode(self, texts, kind="query"):
        v = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    v[i, ord(ch) - 97] += 1
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def test_builder_quality_against_c4_pairs(tmp_path):
    pairs = pd.DataFrame(
        {
            "query": [
                "I need a sturdy case for my game cards that is easy to carry.",
                "A warm blanket for movie nights.",
            ],
            "item_id": ["a", "b"],
            "user_id": ["u", "v"],
            "ori_rating": [5, 5],
            "ori_review": ["Nice little case, holds my game cards and is easy to carry.", "So cozy for movie nights."],
            "c4_file": ["test", "val"],
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    cfg = Config(shared_data_dir=str(tmp_path), c4_pairs_file="pairs.parquet", request_quality_sample=10)
    sample = c4_test_pairs(cfg)
    assert len(sample) == 1  # test rows only
    table = builder_vs_c4(sample, FakeEncoder())
    assert list(table.index) == ["Amazon-C4 request (real)", "extractive request", "extractive simplified"]
    assert table.loc["Amazon-C4 request (real)", "similarity_to_real"] == pytest.approx(1.0, abs=1e-3)
    assert 0 < table.loc["extractive request", "similarity_to_real"] < 1
    assert table.loc["Amazon-C4 request (real)", "mean_words"] == 14
    assert review_word_share("sturdy case for game cards", "holds my game cards") == pytest.approx(2 / 4)


def test_builder_quality_embeddings_are_cached_per_encoder_and_texts(tmp_path):
    """A later run on the same sample reads the cached embeddings: the encoder is not called again."""
    pairs = pd.DataFrame({"query": ["A warm blanket for movie nights."], "ori_review": ["So cozy."], "rating": [5.0]})
    calls = []

    class Counting(FakeEncoder):
        def encode(self, texts, kind="query"):
            calls.append(len(texts))
            return super().encode(texts, kind)

    first = builder_vs_c4(pairs, Counting(), tmp_path, ["enc-a"])
    again = builder_vs_c4(pairs, Counting(), tmp_path, ["enc-a"])
    pd.testing.assert_frame_equal(first, again)
    assert len(calls) == 1
    builder_vs_c4(pairs, Counting(), tmp_path, ["enc-b"])  # another encoder: its own embeddings
    assert len(calls) == 2


def test_run_request_stats_per_builder_and_extractive_on_the_same_targets():
    queries = pd.DataFrame(
        {
            "qid": ["q1"], "user_id": ["U1"], "target_item_id": ["G2"], "target_timestamp": [300],
            "category": ["Grocery_and_Gourmet_Food"], "raw_query": ["I want a crunchy snack for school lunches."],
            "query": ["a crunchy snack"], "query_builder": ["shared"],
        }
    )  # fmt: skip
    inter = pd.DataFrame(
        {
            "user_id": ["U1"], "item_id": ["G2"], "timestamp": [300], "rating": [5.0], "review_title": ["Yum"],
            "review_text": ["My kids love these crunchy snacks in their lunch boxes."], "category": ["x"],
        }
    )  # fmt: skip
    table = run_request_stats(queries, inter)
    assert list(table.index) == [
        "shared request",
        "shared simplified",
        "extractive request (same targets)",
        "extractive simplified (same targets)",
    ]
    assert table.loc["shared simplified", "review_word_share"] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="q1"):
        run_request_stats(queries.assign(target_timestamp=1), inter)
