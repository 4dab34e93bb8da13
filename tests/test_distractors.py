"""Distractor catalogs joining the item pool: dedup counts, stable ids, sampling, errors, the real catalogs."""

import json

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.data.distractors import add_distractors, is_distractor
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.schema import ITEM_COLUMNS, validate
from mrrec_lib.data.text import compose_item_text, stable_id

TOYS = [
    ("LEGO Friends Washing Station", "Toys_and_Games", "", "LEGO"),
    ("Squishy Mesh Ball", "Toys_and_Games", "A stress ball.", ""),
    ("squishy mesh ball!", "Toys_and_Games", "", ""),  # repeat within the catalog
    ("Strawberry Jam", "Toys_and_Games", "", ""),  # repeats a pool item
    ("Ουζερί Τσιτσάνης", "Toys_and_Games", "", ""),  # no ASCII word: cannot be compared
]
GROCERY = [
    ("Strawberry  JAM", "Grocery_and_Gourmet_Food", "Instacart department: pantry", ""),  # repeats a pool item
    ("Squishy Mesh Ball", "Grocery_and_Gourmet_Food", "", ""),  # repeats the toys catalog
    ("Robust Oolong Tea", "Grocery_and_Gourmet_Food", "Instacart aisle: tea", "Robust"),
    ("All-Seasons Salt", "Grocery_and_Gourmet_Food", "", ""),
    ("Chocolate Sandwich Cookies", "Grocery_and_Gourmet_Food", "", ""),
]


def write_catalog(path, rows, drop=None):
    df = pd.DataFrame(rows, columns=["title", "category", "description", "brand"]).assign(source="test repo")
    path.parent.mkdir(parents=True, exist_ok=True)
    (df.drop(columns=drop) if drop else df).to_parquet(path)


def base_pool(titles=("Strawberry Jam", "Earl Grey Tea")):
    return pd.DataFrame({c: [""] * len(titles) for c in ITEM_COLUMNS}).assign(
        item_id=[f"b{i}" for i in range(len(titles))],
        title=list(titles),
        text=list(titles),
        price=np.nan,
        source="multicat",
    )


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("MRREC_SHARED_DATA", raising=False)
    write_catalog(tmp_path / "dx" / "toys.parquet", TOYS)
    write_catalog(tmp_path / "dx" / "grocery.parquet", GROCERY)
    return Config(shared_data_dir=str(tmp_path), pool_distractor_files=["dx/toys.parquet", "dx/grocery.parquet"])


def test_dedup_counts_ids_and_text(cfg):
    skips = SkipLog()
    out, rep = add_distractors(base_pool(), cfg, skips)
    assert rep["catalogs"] == {
        "toys": {
            "loaded": 5,
            "title_without_ascii_words": 1,
            "duplicate_of_pool": 1,
            "duplicate_within": 1,
            "not_sampled": 0,
            "added": 2,
        },
        "grocery": {
            "loaded": 5,
            "title_without_ascii_words": 0,
            "duplicate_of_pool": 1,
            "duplicate_within": 1,
            "not_sampled": 0,
            "added": 3,
        },
    }
    assert (rep["loaded"], rep["duplicate_of_pool"], rep["duplicate_within"], rep["added"]) == (10, 2, 2, 5)
    assert (rep["pool_before"], rep["pool_after"]) == (2, 7) and len(out) == 7
    assert rep["covered_categories"] == ["Grocery_and_Gourmet_Food", "Toys_and_Games"]
    assert rep["per_category"] == {"Grocery_and_Gourmet_Food": 3, "Toys_and_Games": 2}
    assert skips.as_dict() == {
        "distractors/duplicate_of_pool": 2,
        "distractors/duplicate_within": 2,
        "distractors/title_without_ascii_words": 1,
    }
    assert any("squishy mesh ball!" in e for e in skips.examples["distractors/duplicate_within"])

    validated = validate(out, "items")  # the items schema, unique ids, no empty text
    dx = validated[is_distractor(validated["source"])]
    assert dx["item_id"].tolist() == [stable_id(t, prefix="dx:") for t in dx["title"]]
    assert sorted(dx["source"].unique()) == ["distractor:grocery", "distractor:toys"]
    tea = dx[dx["title"] == "Robust Oolong Tea"].iloc[0]
    assert tea["text"] == compose_item_text(
        "Robust Oolong Tea", description="Instacart aisle: tea", store="Robust", category="Grocery_and_Gourmet_Food"
    )
    assert tea["text"] == "Robust Oolong Tea. Category: Grocery and Gourmet Food. Instacart aisle: tea"
    ball = dx[dx["title"] == "Squishy Mesh Ball"].iloc[0]
    assert ball["category"] == "Toys_and_Games"  # the first catalog in config order keeps a shared title
    assert out.iloc[:2]["item_id"].tolist() == ["b0", "b1"]  # the base pool comes first, unchanged


def test_ids_do_not_depend_on_catalog_order(cfg):
    a, _ = add_distractors(base_pool(), cfg, SkipLog())
    swapped = cfg.model_copy(update={"pool_distractor_files": cfg.pool_distractor_files[::-1]})
    b, _ = add_distractors(base_pool(), swapped, SkipLog())
    assert set(a["item_id"]) == set(b["item_id"])


def test_seeded_sample_after_dedup(cfg):
    small = cfg.model_copy(update={"pool_distractor_sample": 3})
    skips = SkipLog()
    out, rep = add_distractors(base_pool(), small, skips)
    assert rep["added"] == 3 and rep["not_sampled"] == 2 and len(out) == 5
    assert skips.counts["distractors/not_sampled"] == 2
    assert sum(c["added"] for c in rep["catalogs"].values()) == 3
    again, _ = add_distractors(base_pool(), small, SkipLog())
    assert again["item_id"].tolist() == out["item_id"].tolist()
    full, _ = add_distractors(base_pool(), cfg, SkipLog())
    assert set(out["item_id"]) <= set(full["item_id"])  # a sample of the deduplicated distractors
    big = cfg.model_copy(update={"pool_distractor_sample": 100})
    assert add_distractors(base_pool(), big, SkipLog())[1]["added"] == 5  # more than there are: all of them


def test_disabled_and_errors(cfg, tmp_path):
    items = base_pool()
    out, rep = add_distractors(items, cfg.model_copy(update={"pool_distractors": False}), SkipLog())
    assert out is items and rep["enabled"] is False and rep["added"] == 0

    write_catalog(tmp_path / "dx" / "broken.parquet", TOYS, drop=["brand"])
    broken = cfg.model_copy(update={"pool_distractor_files": ["dx/broken.parquet"]})
    with pytest.raises(KeyError, match=r"broken\.parquet.*'brand'"):
        add_distractors(items, broken, SkipLog())
    missing = cfg.model_copy(update={"pool_distractor_files": ["dx/nope.parquet"]})
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet"):
        add_distractors(items, missing, SkipLog())
    with pytest.raises(ValueError, match="pool_distractor_sample"):
        add_distractors(items, cfg.model_copy(update={"pool_distractor_sample": -1}), SkipLog())


# The 9 Amazon 2023 categories the six catalogs are mapped to (../shared/data/README.md, distractor_catalogs).
CATALOG_CATEGORIES = [
    "Beauty_and_Personal_Care",
    "Grocery_and_Gourmet_Food",
    "Health_and_Household",
    "Industrial_and_Scientific",
    "Movies_and_TV",
    "Office_Products",
    "Pet_Supplies",
    "Toys_and_Games",
    "Video_Games",
]


def test_real_catalogs_against_the_multicat_pool(shared_data, monkeypatch):
    monkeypatch.delenv("MRREC_SHARED_DATA", raising=False)
    titles = {}
    for path in sorted((shared_data / "amazon2023_multicat").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for h in [*rec["history"], rec["heldout"]]:
                if (h.get("product") or {}).get("title"):
                    titles[h["parent_asin"]] = h["product"]["title"]
    base = pd.DataFrame({"item_id": list(titles), "title": list(titles.values())})
    out, rep = add_distractors(base, Config(shared_data_dir=str(shared_data)), SkipLog())
    assert rep["loaded"] == 150_288
    assert {k: v["loaded"] for k, v in rep["catalogs"].items()} == {
        "instacart_products": 48_331,
        "movielens25m_movies": 62_423,
        "amazon2018_video_games": 16_904,
        "amazon2018_toys": 11_196,
        "amazon2018_industrial_office": 7_088,
        "amazon2018_scientific": 4_346,
    }
    # measured 2026-12-03 on 3,154 multicat titles: 38 repeat a pool item, 3,758 repeat another distractor
    assert 0 < rep["duplicate_of_pool"] < 200 and 3_000 < rep["duplicate_within"] < 4_500
    assert (
        rep["added"]
        == rep["loaded"] - rep["title_without_ascii_words"] - rep["duplicate_of_pool"] - rep["duplicate_within"]
    )
    assert 145_000 < rep["added"] < 148_000 and rep["pool_after"] == len(base) + rep["added"] == len(out)
    assert rep["covered_categories"] == CATALOG_CATEGORIES
    assert out["item_id"].is_unique
