"""Amazon Reviews 2023, many categories: one `{user_id, category, history[4], heldout}` line per (user, category).

A user appears on up to 16 lines (one per category), so a user's lines are
merged into ONE time-ordered, cross-category history: the closest offline match
to the paper's Amazon 2023 memories. Each interaction keeps its line's category
(the Amazon 2023 file-category name, e.g. "Grocery_and_Gourmet_Food"). The
upstream training/validation/test files split by user per category; that split
is not kept (stage 01 splits by user across every source).

Reviews: `parent_asin, rating, timestamp_ms, review_title, review_full,
review_excerpt, product{title, brand, price, main_category}`. `review_full`
is the review text (`review_excerpt` is a shortened copy).

Targets: every review rated >= `min_target_rating` with at least `min_history`
earlier reviews of the same user, Amazon-C4 style. A target whose text repeats
one of the user's earlier reviews ("Great", "Gift", pasted paragraphs) is dropped:
its words would sit in the history the request is answered from.
Items: every `parent_asin` with a product title; the text has no review
snippets (the titles are there), so no target review can reach the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mrrec_lib.config import Config
from mrrec_lib.data.readers import SkipLog, iter_jsonl
from mrrec_lib.data.sources.base import (
    SourceData,
    interactions_frame,
    items_frame,
    make_qid,
    sample_users,
    targets_frame,
)
from mrrec_lib.data.text import clean_text, compose_item_text, is_long, leak_key, normalise, parse_price
from mrrec_lib.runs import shared_data_path

SOURCE = "amazon2023_multicat"
LINE_KEYS = ("user_id", "category", "history", "heldout")
REVIEW_KEYS = ("parent_asin", "rating", "timestamp_ms")


@dataclass(frozen=True)
class Review:
    user_id: str
    item_id: str
    timestamp: int
    rating: float
    title: str
    text: str
    category: str
    product: dict[str, Any]
    where: str


def _missing(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first required key that is absent, null or empty."""
    return next((k for k in keys if obj.get(k) in (None, "")), None)


def _review(raw: Any, user_id: str, category: str, where: str, skips: SkipLog) -> Review | None:
    if not isinstance(raw, dict):
        skips.add(SOURCE, "review_not_an_object", where)
        return None
    missing = _missing(raw, REVIEW_KEYS)
    if missing:
        skips.add(SOURCE, f"review_missing_{missing}", where)
        return None
    ts, rating = raw["timestamp_ms"], raw["rating"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or isinstance(rating, bool):
        skips.add(SOURCE, "review_bad_timestamp_ms", where)
        return None
    try:
        rating = float(rating)
    except (TypeError, ValueError):
        skips.add(SOURCE, "review_bad_rating", where)
        return None
    product = raw.get("product") if isinstance(raw.get("product"), dict) else {}
    return Review(
        user_id=user_id,
        item_id=str(raw["parent_asin"]),
        timestamp=int(ts),
        rating=rating,
        title=clean_text(raw.get("review_title")),
        text=clean_text(raw.get("review_full")),
        category=category,
        product=product,
        where=where,
    )


def read_reviews(cfg: Config, skips: SkipLog) -> dict[str, list[Review]]:
    """user -> that user's reviews over every configured file and line, oldest first (ties by item id)."""
    by_user: dict[str, dict[tuple[str, int], Review]] = {}
    for rel in cfg.amazon2023_multicat_files:
        path = shared_data_path(cfg, rel)
        for lineno, obj in iter_jsonl(path, skips, SOURCE):
            where = f"{path.name}:{lineno}"
            missing = _missing(obj, LINE_KEYS)
            if missing:
                skips.add(SOURCE, f"line_missing_{missing}", where)
                continue
            if not isinstance(obj["history"], list):
                skips.add(SOURCE, "line_history_not_a_list", where)
                continue
            user_id, category = str(obj["user_id"]), clean_text(obj["category"])
            reviews = by_user.setdefault(user_id, {})
            raws = [*obj["history"], obj["heldout"]]
            for j, raw in enumerate(raws):
                label = f"{where} heldout" if j == len(raws) - 1 else f"{where} history[{j}]"
                rv = _review(raw, user_id, category, label, skips)
                if rv is None:
                    continue
                if (rv.item_id, rv.timestamp) in reviews:
                    skips.add(SOURCE, "duplicate_review", label)
                    continue
                reviews[(rv.item_id, rv.timestamp)] = rv
    return {u: sorted(r.values(), key=lambda rv: (rv.timestamp, rv.item_id)) for u, r in by_user.items()}


def _repeats(text: str, earlier: str, min_words: int) -> bool:
    """`earlier` repeats review `text`: equal normalised text, or (long text) its opening words inside."""
    nt = normalise(text)
    if not nt:
        return False
    ne = normalise(earlier)
    return nt == ne or (is_long(text, min_words) and f" {leak_key(text, min_words)} " in f" {ne} ")


def _item_row(rv: Review, cfg: Config) -> dict[str, Any] | None:
    title = clean_text(rv.product.get("title"))
    if not title:
        return None
    brand = clean_text(rv.product.get("brand"))
    return {
        "item_id": rv.item_id,
        "category": rv.category,
        "subcategory": "",
        "title": title,
        "description": "",
        "store": brand,
        "price": parse_price(rv.product.get("price")),
        "text": compose_item_text(title, store=brand, category=rv.category, max_chars=cfg.item_text_max_chars),
        "source": SOURCE,
    }


def load_amazon2023_multicat(cfg: Config, skips: SkipLog) -> SourceData:
    users = read_reviews(cfg, skips)
    keep = sample_users(list(users), cfg, SOURCE)
    users = {u: users[u] for u in sorted(keep)}
    items: dict[str, dict[str, Any]] = {}
    untitled: set[str] = set()
    interactions: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for user_id, reviews in users.items():
        for k, rv in enumerate(reviews):
            row = items.get(rv.item_id) or _item_row(rv, cfg)
            if row is None:
                if rv.item_id not in untitled:
                    skips.add(SOURCE, "item_without_title", rv.where)
                    untitled.add(rv.item_id)
            else:
                items.setdefault(rv.item_id, row)
            interactions.append(
                {
                    "user_id": user_id,
                    "item_id": rv.item_id,
                    "rating": rv.rating,
                    "review_title": rv.title,
                    "review_text": rv.text,
                    "timestamp": rv.timestamp,
                    "category": rv.category,
                    "source": SOURCE,
                }
            )
            if rv.rating < cfg.min_target_rating:
                continue
            if k < cfg.min_history:
                skips.add(SOURCE, "target_history_too_short", rv.where)
                continue
            if any(_repeats(rv.text, e.text, cfg.leakage_min_words) for e in reviews[:k]):
                skips.add(SOURCE, "target_repeats_earlier_review", rv.where)
                continue
            targets.append(
                {
                    "qid": make_qid(SOURCE, user_id, rv.timestamp),
                    "user_id": user_id,
                    "item_id": rv.item_id,
                    "timestamp": rv.timestamp,
                    "rating": rv.rating,
                    "review_title": rv.title,
                    "review_text": rv.text,
                    "category": rv.category,
                    "raw_query": "",
                    "rule": "review",
                    "source": SOURCE,
                }
            )
    notes = {
        "users": len(users),
        "users_in_several_categories": sum(len({rv.category for rv in r}) > 1 for r in users.values()),
        "reviews": len(interactions),
        "distinct_items": len(set(items) | untitled),
        "items_with_title": len(items),
        "categories": len({rv.category for r in users.values() for rv in r}),
    }
    return SourceData(
        items_frame(list(items.values())), interactions_frame(interactions), targets_frame(targets), notes
    )
