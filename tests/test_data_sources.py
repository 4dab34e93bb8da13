"""Every stage-01 source on tiny fixture files in the real schemas (malformed lines included)."""

import json
from pathlib import Path

import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.sources.agenticshop import load_agenticshop
from mrrec_lib.data.sources.amazon2023 import load_amazon2023, parse_titles
from mrrec_lib.data.sources.amazon_c4 import load_amazon_c4, load_queries
from mrrec_lib.data.text import normalise, stable_id

FIX = Path(__file__).parent / "fixtures" / "data"


def _titles_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "inst.parquet"
    pd.DataFrame(
        {
            "history_list": [["I1", "I2"], ["I3v"], ["I9", "I8"], ["I7"]],
            "history_text": [
                "Item 1: Curl Shampoo, 16 oz, Sulfate Free\nItem 2: Wide Tooth Comb",
                "Item 1: Smoothing Serum",
                "Item 1: only one title for two ids",
                "Item 1: Glitter Nail Gel",
            ],
        }
    ).to_parquet(path)
    return path


def _cfg(**kw) -> Config:
    return Config(shared_data_dir=str(FIX), min_history=2, extra_queries_per_user=2, **kw)


def test_agenticshop_removes_target_copies_and_orders_history():
    skips = SkipLog()
    data = load_agenticshop(_cfg(agenticshop_files=["agenticshop_tiny.json"]), skips)
    assert skips.counts["agenticshop/malformed_user"] == 2  # U_BAD, U_NOTARGET
    assert skips.counts["agenticshop/history_copy_of_target"] == 3  # U_GOOD: list head + second copy; U_SHORT: head
    assert skips.counts["agenticshop/history_text_equal_to_target"] == 1  # same words under another product
    assert skips.counts["agenticshop/history_too_short"] == 1  # U_SHORT: one review left
    (target,) = data.targets.to_dict("records")
    assert target["user_id"] == "U_GOOD"
    # the Amazon 2023 file category (the file's stem) for every item; the category path's second level is kept
    assert target["category"] == "agenticshop_tiny" and set(data.items["category"]) == {"agenticshop_tiny"}
    assert data.items.set_index("title").loc["Rose Petal Black Tea", "subcategory"] == "Beverages"
    assert "Category: agenticshop tiny" in data.items.set_index("title").loc["Rose Petal Black Tea", "text"]
    assert not {"noun_hint", "item_title", "store", "subcategory"} & set(data.targets.columns)  # builders see no item
    assert target["item_id"] == stable_id("Rose Petal Black Tea", "Tao Tea", prefix="as-")
    inter = data.interactions.sort_values("timestamp")
    # newest-first list reversed: the oldest review (last in the list) gets timestamp 0, the target comes last
    assert inter["review_text"].iloc[0].startswith("My first order")
    assert list(inter["timestamp"]) == [0, 1, 2, 3] and target["timestamp"] == 3
    history = inter[inter["timestamp"] < target["timestamp"]]
    assert not history["review_text"].map(normalise).eq(normalise(target["review_text"])).any()
    assert data.items.set_index("title").loc["Assam Black Tea", "price"] == pytest.approx(8.99)


def test_amazon2023_titles_malformed_lines_and_item_text(tmp_path):
    titles = _titles_parquet(tmp_path)
    cfg = _cfg(amazon2023_reviews_files=["amazon2023_tiny.jsonl"], amazon2023_titles_files=[str(titles)])
    skips = SkipLog()
    data = load_amazon2023(cfg, skips)
    c = skips.counts
    assert c["amazon2023_reviews/malformed_json"] == 1
    assert c["amazon2023_reviews/malformed_line"] == 1  # user C: no target
    assert c["amazon2023_reviews/malformed_review"] == 1  # D's review without timestamp
    assert c["amazon2023_reviews/duplicate_review"] == 1  # B's first review twice in one line
    assert c["amazon2023_reviews/titles_row_misaligned"] == 1
    # B's target item is reviewed by nobody else and has no title: dropped and counted
    assert c["amazon2023_reviews/heldout_target_no_item_text"] >= 1
    q = data.targets.set_index("qid")
    assert "amazon2023_reviews:A:1600000000005" in q.index  # A's target has B's review as item text
    assert q.loc["amazon2023_reviews:A:1600000000005", "rule"] == "heldout"
    items = data.items.set_index("item_id")
    assert items.loc["I1", "title"] == "Curl Shampoo, 16 oz, Sulfate Free"
    assert items.loc["I3", "title"] == "Smoothing Serum"  # matched through the asin
    # no item text contains any accepted target review
    for text in data.targets["review_text"]:
        assert not any(normalise(text)[:40] in normalise(t) for t in data.items["text"])
    # extra queries: earlier high-rated reviews with >= min_history before them, capped per user
    extras = data.targets[data.targets["rule"] == "earlier_review"]
    assert (extras.groupby("user_id").size() <= cfg.extra_queries_per_user).all()
    for t in extras.itertuples():
        before = data.interactions[
            (data.interactions.user_id == t.user_id) & (data.interactions.timestamp < t.timestamp)
        ]
        assert len(before) >= cfg.min_history and t.rating >= cfg.min_target_rating
        assert t.item_id in items.index


def test_amazon2023_short_duplicate_texts_leave_history(tmp_path):
    """D wrote "Love it" twice: the earlier copy leaves D's interactions and every item text."""
    cfg = _cfg(
        amazon2023_reviews_files=["amazon2023_tiny.jsonl"], amazon2023_titles_files=[str(_titles_parquet(tmp_path))]
    )
    skips = SkipLog()
    data = load_amazon2023(cfg, skips)
    d = data.targets[data.targets.user_id == "D"]
    assert list(d["review_text"]) == ["Love it"]
    assert skips.counts["amazon2023_reviews/history_review_repeats_target"] == 1
    history = data.interactions[
        (data.interactions.user_id == "D") & (data.interactions.timestamp < d["timestamp"].iloc[0])
    ]
    assert set(history["item_id"]) == {"I5", "I10"}
    assert not data.items["text"].str.contains("Love it").any()


def test_parse_titles_requires_aligned_numbering():
    assert parse_titles("Item 1: A, with comma, Item 2: B", ["x", "y"]) == {"x": "A, with comma", "y": "B"}
    assert parse_titles("Item 1: A", ["x", "y"]) is None


def _c4_cfg(**kw) -> Config:
    return Config(
        amazon_c4_queries_path=str(FIX / "c4_test.csv"),
        amazon_c4_items_path=str(FIX / "c4_items.jsonl"),
        amazon_reviews_dir=str(FIX / "amazon_reviews"),
        min_history=2,
        **kw,
    )


def _no_download(repo, filename):
    raise AssertionError(f"hub download called for {repo}/{filename} although local paths are configured")


def test_amazon_c4_local_files_history_strictly_before_target():
    skips = SkipLog()
    data = load_amazon_c4(_c4_cfg(), skips, download=_no_download)
    c = skips.counts
    assert c["amazon_c4/empty_query"] == 1
    assert c["amazon_c4/target_not_in_pool"] == 1
    assert c["amazon_c4/malformed_pool_item"] == 1 and c["amazon_c4/malformed_json"] == 1
    assert c["amazon_c4/malformed_review"] == 1
    assert c["amazon_c4/meta_without_title"] == 1
    q = data.targets.set_index("qid")
    assert set(q.index) == {"amazon_c4:1", "amazon_c4:2"}
    assert (q["rule"] == "c4").all() and q.loc["amazon_c4:1", "raw_query"].startswith("I need a gentle cleanser")
    inter = data.interactions
    ua = inter[(inter.user_id == "UA") & (inter.timestamp < q.loc["amazon_c4:1", "timestamp"])]
    assert set(ua["item_id"]) == {"H1", "H2", "H3"}  # the target and the later review are excluded
    # UB's target review is not in the files: every UB review of the target item is gone, recorded
    assert data.notes["target_review_not_found"] == 1
    ub = inter[inter.user_id == "UB"]
    assert list(ub.loc[ub.item_id == "P2", "review_text"]) == ["So cozy for movie nights."]
    assert "ZZ" not in set(inter.user_id)
    items = data.items.set_index("item_id")
    assert items.loc["H1", "title"] == "Hydrating Face Moisturizer" and items.loc["P1", "category"] == "Care"
    assert items.loc["H1", "category"] == "All_Beauty"  # the review file's category, not main_category "All Beauty"
    assert "Category: Care" in items.loc["P1", "text"] and "Category: All Beauty" in items.loc["H1", "text"]


def test_amazon_c4_downloads_only_without_local_paths():
    calls = []
    files = {
        "test.csv": FIX / "c4_test.csv",
        "sampled_item_metadata_1M.jsonl": FIX / "c4_items.jsonl",
        "raw/review_categories/All_Beauty.jsonl": FIX / "amazon_reviews" / "All_Beauty.jsonl",
        "raw/meta_categories/meta_All_Beauty.jsonl": FIX / "amazon_reviews" / "meta_All_Beauty.jsonl",
    }

    def fake(repo, filename):
        calls.append((repo, filename))
        return files[filename]

    data = load_amazon_c4(Config(amazon_reviews_categories=["All_Beauty"], min_history=2), SkipLog(), download=fake)
    assert ("McAuley-Lab/Amazon-C4", "test.csv") in calls
    assert ("McAuley-Lab/Amazon-Reviews-2023", "raw/review_categories/All_Beauty.jsonl") in calls
    assert len(data.targets) == 2
    with pytest.raises(ValueError, match="amazon_reviews_categories"):
        load_amazon_c4(Config(), SkipLog(), download=fake)


def test_amazon_c4_reads_the_real_json_query_rows(shared_data):
    rows = load_queries(
        Config(amazon_c4_queries_path=str(shared_data / "amazon_c4_queries" / "Baby" / "test.json")),
        SkipLog(),
        _no_download,
    )
    raw = json.loads((shared_data / "amazon_c4_queries" / "Baby" / "test.json").read_text())
    assert len(rows) == len(raw) and rows[0]["qid"] == str(raw[0]["qid"])
    assert rows[0]["query"] and rows[0]["review"]


def test_amazon_c4_query_json_with_a_broken_row(tmp_path, shared_data):
    raw = json.loads((shared_data / "amazon_c4_queries" / "Office" / "test.json").read_text())[:5]
    raw.append({"qid": 99999, "query": "no item or user"})
    path = tmp_path / "test.json"
    path.write_text(json.dumps(raw))
    skips = SkipLog()
    rows = load_queries(Config(amazon_c4_queries_path=str(path)), skips, _no_download)
    assert len(rows) == 5 and skips.counts["amazon_c4/malformed_query_row"] == 1
