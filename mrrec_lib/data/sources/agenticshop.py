"""AgenticShop user files: `{user_id: [stats, {most_frequent_category, review, target}]}`.

Facts checked on the shared Grocery file (and handled for any file in this format):
- `review` always starts with the target itself, and a few lists hold it a
  second time; some users paste one review text under many products. Every
  history entry equal to the target (same product and text) or with the
  target's text is removed and counted, otherwise the held-out words would
  sit in the user's memory.
- There are no item ids: an item is `stable_id(title, store)`.
- The category is the file's Amazon 2023 category (its stem,
  "Grocery_and_Gourmet_Food"), the name every source uses; the second level of the
  product's category path ("Beverages") is the subcategory.
- There are no timestamps. The target (the held-out, most recent purchase)
  comes first, and reviews such as "I ordered more of this" precede the
  earlier "I just had one of these" of the same product, so the list is
  newest-first: history gets timestamps 0..n-1 in reversed list order and the
  target n.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrrec_lib.config import Config
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.sources.base import (
    SourceData,
    interactions_frame,
    items_frame,
    make_qid,
    sample_users,
    targets_frame,
)
from mrrec_lib.data.text import (
    clean_text,
    compose_item_text,
    is_long,
    leak_key,
    normalise,
    parse_price,
    stable_id,
)
from mrrec_lib.runs import shared_data_path

SOURCE = "agenticshop"


def _product_row(product: dict[str, Any], file_category: str, cfg: Config) -> dict[str, Any] | None:
    title = clean_text(product.get("title"))
    if not title:
        return None
    store = clean_text(product.get("store"))
    cats = [clean_text(c) for c in product.get("categories") or [] if clean_text(c)]
    return {
        "item_id": stable_id(title, store, prefix="as-"),
        "category": file_category,
        "subcategory": cats[1] if len(cats) > 1 else "",
        "title": title,
        "description": clean_text(product.get("description")),
        "store": store,
        "price": parse_price(product.get("price")),
        "text": compose_item_text(
            title,
            product.get("description") or "",
            store,
            product.get("features") or "",
            max_chars=cfg.item_text_max_chars,
            category=file_category,
        ),
        "source": SOURCE,
    }


def _entry(raw: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("product"), dict):
        return None
    return raw, raw["product"]


def _same_text(a: str, b: str, min_words: int) -> bool:
    """b repeats review a: equal text, or (a long) a's opening words inside b."""
    na, nb = normalise(a), normalise(b)
    if not na:
        return False
    return na == nb or (is_long(a, min_words) and leak_key(a, min_words) in nb)


def load_file(path: Path, cfg: Config, skips: SkipLog) -> tuple[list[dict], list[dict], list[dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{SOURCE}: cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{SOURCE}: {path} must map user_id -> [stats, body], got {type(data).__name__}")
    file_category = path.stem
    keep = sample_users(list(data), cfg, f"{SOURCE}:{path.name}")
    items: dict[str, dict] = {}
    interactions: list[dict] = []
    targets: list[dict] = []
    for user_id in sorted(keep):
        value = data[user_id]
        body = value[1] if isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict) else None
        if body is None or not isinstance(body.get("review"), list) or _entry(body.get("target")) is None:
            skips.add(SOURCE, "malformed_user", f"{path.name}:{user_id}")
            continue
        target_raw, target_product = _entry(body["target"])
        target_item = _product_row(target_product, file_category, cfg)
        if target_item is None:
            skips.add(SOURCE, "target_no_item_text", f"{path.name}:{user_id}")
            continue
        target_text = clean_text(target_raw.get("user_review"))
        history: list[tuple[dict, dict]] = []
        seen: set[tuple[str, str]] = set()
        for i, raw in enumerate(body["review"]):
            entry = _entry(raw)
            row = _product_row(entry[1], file_category, cfg) if entry else None
            if row is None:
                skips.add(SOURCE, "malformed_history_entry", f"{path.name}:{user_id}[{i}]")
                continue
            text = clean_text(entry[0].get("user_review"))
            if row["item_id"] == target_item["item_id"] and normalise(text) == normalise(target_text):
                skips.add(SOURCE, "history_copy_of_target", f"{path.name}:{user_id}[{i}]")
                continue
            if _same_text(target_text, text, cfg.leakage_min_words):
                skips.add(SOURCE, "history_text_equal_to_target", f"{path.name}:{user_id}[{i}]")
                continue
            if (row["item_id"], normalise(text)) in seen:
                skips.add(SOURCE, "duplicate_history_entry", f"{path.name}:{user_id}[{i}]")
                continue
            seen.add((row["item_id"], normalise(text)))
            history.append((entry[0], row))
        if len(history) < cfg.min_history:
            skips.add(SOURCE, "history_too_short", f"{path.name}:{user_id}")
            continue
        chronological = list(reversed(history)) + [(target_raw, target_item)]
        for ts, (review, row) in enumerate(chronological):
            items.setdefault(row["item_id"], row)
            interactions.append(
                {
                    "user_id": user_id,
                    "item_id": row["item_id"],
                    "rating": review.get("user_rating"),
                    "review_title": clean_text(review.get("user_review_title")),
                    "review_text": clean_text(review.get("user_review")),
                    "timestamp": ts,
                    "category": row["category"],
                    "source": SOURCE,
                }
            )
        ts = len(history)
        targets.append(
            {
                "qid": make_qid(SOURCE, user_id, ts),
                "user_id": user_id,
                "item_id": target_item["item_id"],
                "timestamp": ts,
                "rating": target_raw.get("user_rating"),
                "review_title": clean_text(target_raw.get("user_review_title")),
                "review_text": target_text,
                "category": target_item["category"],
                "raw_query": "",
                "rule": "heldout",
                "source": SOURCE,
            }
        )
    return list(items.values()), interactions, targets


def load_agenticshop(cfg: Config, skips: SkipLog) -> SourceData:
    items: dict[str, dict] = {}
    interactions: list[dict] = []
    targets: list[dict] = []
    for rel in cfg.agenticshop_files:
        f_items, f_inter, f_targets = load_file(shared_data_path(cfg, rel), cfg, skips)
        for row in f_items:
            items.setdefault(row["item_id"], row)
        interactions += f_inter
        targets += f_targets
    item_df = items_frame(list(items.values()))
    return SourceData(item_df, interactions_frame(interactions), targets_frame(targets))
