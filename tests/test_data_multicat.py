"""The Amazon 2023 multi-category source on a tiny fixture in its real schema (malformed lines included)."""

from pathlib import Path

from mrrec_lib.config import Config
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.sources.amazon2023_multicat import load_amazon2023_multicat
from mrrec_lib.data.text import compose_item_text

FIX = Path(__file__).parent / "fixtures" / "data"
SRC = "amazon2023_multicat"


def _cfg(**kw) -> Config:
    return Config(shared_data_dir=str(FIX), amazon2023_multicat_files=["multicat_tiny.jsonl"], **kw)


def test_multicat_merges_a_users_lines_into_one_timeline():
    data = load_amazon2023_multicat(_cfg(), SkipLog())
    u1 = data.interactions[data.interactions.user_id == "U1"].sort_values("timestamp")
    # two lines (Grocery, Toys) -> one history ordered by time across categories, each with its line's category
    assert list(u1["item_id"]) == ["T1", "G1", "T2", "G2", "T3", "G3"]
    assert list(u1["category"]) == ["Toys_and_Games", "Grocery_and_Gourmet_Food"] * 2 + [
        "Toys_and_Games",
        "Grocery_and_Gourmet_Food",
    ]
    assert u1["review_text"].iloc[0].startswith("The first thing I ever reviewed")  # review_full, not the excerpt
    assert data.notes["users_in_several_categories"] == 1


def test_multicat_targets_every_five_star_review_with_history():
    skips = SkipLog()
    data = load_amazon2023_multicat(_cfg(), skips)
    got = {(t.user_id, t.item_id, t.timestamp) for t in data.targets.itertuples()}
    # T1 is U1's first review; G1 (4) and T2 (3) are not 5-star; U2's P2 "Great" repeats P1's "Great"
    assert got == {("U1", "G2", 300), ("U1", "T3", 400), ("U1", "G3", 500), ("U2", "P1", 30), ("U4", "E4", 7)}
    assert set(data.targets["rule"]) == {"review"}
    assert data.targets.set_index("item_id").loc["G2", "category"] == "Grocery_and_Gourmet_Food"
    c = skips.counts
    assert c[f"{SRC}/target_history_too_short"] == 2  # T1@50, U2's P1@10
    assert c[f"{SRC}/target_repeats_earlier_review"] == 1
    # min_history counts earlier reviews of any category
    strict = load_amazon2023_multicat(_cfg(min_history=3), SkipLog())
    assert {(t.item_id, t.timestamp) for t in strict.targets.itertuples() if t.user_id == "U1"} == {
        ("G2", 300),
        ("T3", 400),
        ("G3", 500),
    }
    assert load_amazon2023_multicat(_cfg(min_history=4), SkipLog()).targets.query("user_id == 'U1'").shape[0] == 2


def test_multicat_skips_are_counted_with_file_line_and_field():
    skips = SkipLog()
    load_amazon2023_multicat(_cfg(), skips)
    c, ex = skips.counts, skips.examples
    assert c[f"{SRC}/malformed_json"] == 1 and ex[f"{SRC}/malformed_json"][0].startswith("multicat_tiny.jsonl:4")
    assert c[f"{SRC}/line_missing_heldout"] == 1 and ex[f"{SRC}/line_missing_heldout"] == ["multicat_tiny.jsonl:5"]
    assert ex[f"{SRC}/review_missing_timestamp_ms"] == ["multicat_tiny.jsonl:6 history[1]"]
    assert c[f"{SRC}/item_without_title"] == 1 and ex[f"{SRC}/item_without_title"] == ["multicat_tiny.jsonl:1 heldout"]


def test_multicat_items_have_titles_and_no_reviews():
    data = load_amazon2023_multicat(_cfg(), SkipLog())
    items = data.items.set_index("item_id")
    assert "G3" not in items.index  # no title: not in the pool (its target is dropped later as target_not_in_pool)
    assert items.loc["G2", "text"] == compose_item_text(
        "Crunchy Veggie Straws, 12 Pack", store="SnackCo", category="Grocery_and_Gourmet_Food"
    )
    assert "Category: Grocery and Gourmet Food" in items.loc["G2", "text"]
    assert items.loc["T3", "store"] == "" and items["price"].isna().sum() == 1  # brand/price null in the file
    for review in data.interactions["review_text"]:
        assert not any(review[:30] in text for text in items["text"])


def test_multicat_max_users_samples_whole_users():
    data = load_amazon2023_multicat(_cfg(max_users=1), SkipLog())
    assert data.interactions["user_id"].nunique() == 1
    assert set(data.targets["user_id"]) <= set(data.interactions["user_id"])
