"""Amazon Reviews 2023 user files: one `{user_id, history[], target}` line per user.

Reviews are in the raw Amazon 2023 schema (rating, title, text, asin,
parent_asin, user_id, timestamp ms, ...); items are keyed by `parent_asin`.
There is no item metadata, so an item's text is its title (recovered from the
Rec-R1 `inst_*.parquet` prompts) plus snippets of reviews written about it.

Because reviews become item text, choosing query targets and building item
text are one problem, solved greedily (held-out targets first, then earlier
reviews, latest first):
- a target review, any review with the same (or, when long, a containing)
  text, and every review the target's user wrote about the target item are
  banned from every item text, so no query's own words are retrievable;
- a target is accepted only if its item still has text afterwards and no
  already accepted query loses the last text of its item;
- the user's earlier reviews that repeat the target's text are dropped from
  the interactions (they would leak it into memory), unless that would cut an
  accepted query's history below `min_history`.
Every rejection is counted per reason.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

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
from mrrec_lib.data.text import clean_text, compose_item_text, is_long, leak_key, normalise
from mrrec_lib.runs import shared_data_path

SOURCE = "amazon2023_reviews"
REVIEW_KEYS = ("rating", "timestamp")
_ITEM_MARK = re.compile(r"(?:^|,\s*|\n)Item (\d+): ")


@dataclass
class Review:
    idx: int
    user_id: str
    item_id: str
    timestamp: int
    rating: float
    title: str
    text: str
    helpful: int
    norm: str
    long: bool
    key: str


def parse_titles(history_text: str, ids: list[str]) -> dict[str, str] | None:
    """Titles of `ids` from "Item 1: <title>, Item 2: ..."; None when the numbering does not line up."""
    marks = list(_ITEM_MARK.finditer(history_text or ""))
    if [int(m.group(1)) for m in marks] != list(range(1, len(ids) + 1)):
        return None
    out = {}
    for i, (item, m) in enumerate(zip(ids, marks, strict=True)):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(history_text)
        title = clean_text(history_text[m.end() : end])
        if title:
            out[str(item)] = title
    return out


def load_titles(paths: list[Path], skips: SkipLog) -> dict[str, str]:
    titles: dict[str, str] = {}
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{SOURCE}: titles file not found: {path} (config amazon2023_titles_files)")
        df = pd.read_parquet(path)
        missing = [c for c in ("history_list", "history_text") if c not in df.columns]
        if missing:
            raise ValueError(f"{SOURCE}: {path} lacks column(s) {missing}")
        for i, (ids, text) in enumerate(zip(df["history_list"], df["history_text"], strict=True)):
            parsed = parse_titles(text, list(ids) if ids is not None else [])
            if parsed is None:
                skips.add(SOURCE, "titles_row_misaligned", f"{path.name}:row {i}")
                continue
            titles.update(parsed)
    return titles


def _read_users(cfg: Config, skips: SkipLog) -> dict[str, dict[str, Any]]:
    """user -> {"reviews": {(item, ts): raw}, "target": (item, ts)} over all configured files."""
    users: dict[str, dict[str, Any]] = {}
    for rel in cfg.amazon2023_reviews_files:
        path = shared_data_path(cfg, rel)
        for lineno, obj in iter_jsonl(path, skips, SOURCE):
            where = f"{path.name}:{lineno}"
            user_id = obj.get("user_id")
            if not isinstance(user_id, str) or not isinstance(obj.get("history"), list):
                skips.add(SOURCE, "malformed_line", where)
                continue
            if not isinstance(obj.get("target"), dict):
                skips.add(SOURCE, "malformed_line", where)
                continue
            entry = users.setdefault(user_id, {"reviews": {}, "target": None})
            parsed_target = None
            seen_in_line: set[tuple[str, int]] = set()
            for j, raw in enumerate([*obj["history"], obj["target"]]):
                is_target = j == len(obj["history"])
                key = _review_key(raw)
                if key is None:
                    skips.add(SOURCE, "malformed_target" if is_target else "malformed_review", f"{where}[{j}]")
                    continue
                if raw.get("user_id") not in (None, user_id):
                    skips.add(SOURCE, "review_of_other_user", f"{where}[{j}]")
                    continue
                if key in seen_in_line:
                    skips.add(SOURCE, "duplicate_review", f"{where}[{j}]")
                seen_in_line.add(key)
                entry["reviews"].setdefault(key, raw)
                if is_target:
                    parsed_target = key
            if parsed_target is not None and (entry["target"] is None or parsed_target[1] > entry["target"][1]):
                entry["target"] = parsed_target
    return users


def _review_key(raw: Any) -> tuple[str, int] | None:
    if not isinstance(raw, dict):
        return None
    item = raw.get("parent_asin") or raw.get("asin")
    ts = raw.get("timestamp")
    if not isinstance(item, str) or not item or isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    if any(raw.get(k) is None for k in REVIEW_KEYS):
        return None
    try:
        float(raw["rating"])
    except (TypeError, ValueError):
        return None
    return item, int(ts)


class _Selector:
    """Greedy target selection that keeps every accepted target's item retrievable and leak-free."""

    def __init__(self, reviews: list[Review], titled: set[str], cfg: Config):
        self.r = reviews
        self.cfg = cfg
        self.titled = titled
        self.by_item: dict[str, list[int]] = defaultdict(list)
        self.by_user: dict[str, list[int]] = defaultdict(list)
        self.by_norm: dict[str, list[int]] = defaultdict(list)
        for rv in reviews:
            self.by_item[rv.item_id].append(rv.idx)
            self.by_user[rv.user_id].append(rv.idx)
            if rv.norm:
                self.by_norm[rv.norm].append(rv.idx)
        keys = {rv.key for rv in reviews if rv.long}
        self.containing: dict[str, set[int]] = defaultdict(set)  # leak key -> reviews whose text contains it
        k = cfg.leakage_min_words
        for rv in reviews:
            words = rv.norm.split()
            for i in range(max(0, len(words) - k + 1)):
                window = " ".join(words[i : i + k])
                if window in keys:
                    self.containing[window].add(rv.idx)
        self.banned: set[int] = set()  # never in item text
        self.dropped: set[int] = set()  # removed from the interactions
        self.accepted: dict[int, str] = {}  # review idx -> rule
        self.accepted_items: dict[str, int] = defaultdict(int)

    def _copies(self, rv: Review) -> set[int]:
        out = set(self.by_norm.get(rv.norm, ())) if rv.norm else set()
        if rv.long:
            out |= self.containing.get(rv.key, set())
        return out

    def _has_text(self, item: str, banned: set[int]) -> bool:
        return item in self.titled or any(i not in banned for i in self.by_item[item])

    def history_len(self, user: str, ts: int, dropped: set[int]) -> int:
        return sum(1 for i in self.by_user[user] if self.r[i].timestamp < ts and i not in dropped)

    def try_accept(self, idx: int, rule: str) -> str | None:
        """Accept review `idx` as a target; return None, or the reason it cannot be one."""
        rv = self.r[idx]
        if idx in self.dropped:
            return "repeats_a_later_target"
        if self.history_len(rv.user_id, rv.timestamp, self.dropped) < self.cfg.min_history:
            return "history_too_short"
        copies = self._copies(rv)
        own_item = {i for i in self.by_item[rv.item_id] if self.r[i].user_id == rv.user_id}
        banned = self.banned | copies | own_item | {idx}
        if not self._has_text(rv.item_id, banned):
            return "target_no_item_text"
        touched = {self.r[i].item_id for i in copies | own_item}
        if any(self.accepted_items[it] and not self._has_text(it, banned) for it in touched):
            return "would_remove_accepted_item_text"
        earlier_copies = {
            i for i in copies if self.r[i].user_id == rv.user_id and self.r[i].timestamp < rv.timestamp and i != idx
        }
        if earlier_copies & set(self.accepted):
            return "repeats_an_accepted_target"
        dropped = self.dropped | earlier_copies
        if self.history_len(rv.user_id, rv.timestamp, dropped) < self.cfg.min_history:
            return "history_too_short"
        later = [i for i in self.accepted if self.r[i].user_id == rv.user_id]
        if any(self.history_len(rv.user_id, self.r[i].timestamp, dropped) < self.cfg.min_history for i in later):
            return "would_shorten_accepted_history"
        self.banned, self.dropped = banned, dropped
        self.accepted[idx] = rule
        self.accepted_items[rv.item_id] += 1
        return None


def _reviews(users: dict[str, dict[str, Any]], cfg: Config) -> tuple[list[Review], dict[str, int]]:
    reviews: list[Review] = []
    primary: dict[str, int] = {}
    for user_id in sorted(users):
        entry = users[user_id]
        for (item, ts), raw in sorted(entry["reviews"].items(), key=lambda kv: (kv[0][1], kv[0][0])):
            text = clean_text(raw.get("text"))
            rv = Review(
                idx=len(reviews),
                user_id=user_id,
                item_id=item,
                timestamp=ts,
                rating=float(raw["rating"]),
                title=clean_text(raw.get("title")),
                text=text,
                helpful=int(raw.get("helpful_vote") or 0),
                norm=normalise(text),
                long=is_long(text, cfg.leakage_min_words),
                key=leak_key(text, cfg.leakage_min_words),
            )
            reviews.append(rv)
            if entry["target"] == (item, ts):
                primary[user_id] = rv.idx
    return reviews, primary


def select_targets(
    reviews: list[Review], primary: dict[str, int], titled: set[str], cfg: Config, skips: SkipLog
) -> _Selector:
    sel = _Selector(reviews, titled, cfg)
    for user_id in sorted(primary):
        reason = sel.try_accept(primary[user_id], "heldout")
        if reason:
            skips.add(SOURCE, f"heldout_{reason}", user_id)
    if cfg.extra_queries_per_user <= 0:
        return sel
    for user_id in sorted(sel.by_user):
        taken = 0
        for idx in sorted(sel.by_user[user_id], key=lambda i: -reviews[i].timestamp):
            rv = reviews[idx]
            if taken >= cfg.extra_queries_per_user:
                break
            if idx == primary.get(user_id) or rv.rating < cfg.min_target_rating:
                continue
            if len(rv.text) < cfg.min_target_review_chars:
                continue
            if primary.get(user_id) is not None and rv.timestamp >= reviews[primary[user_id]].timestamp:
                continue
            if sel.history_len(user_id, rv.timestamp, sel.dropped) < cfg.min_history:
                continue
            reason = sel.try_accept(idx, "earlier_review")
            if reason:
                skips.add(SOURCE, f"earlier_review_{reason}", f"{user_id}@{rv.timestamp}")
            else:
                taken += 1
    return sel


def _item_rows(sel: _Selector, titles: dict[str, str], cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for item, idxs in sorted(sel.by_item.items()):
        usable = sorted(
            (sel.r[i] for i in idxs if i not in sel.banned),
            key=lambda rv: (-rv.helpful, -len(rv.text), rv.idx),
        )
        snippets = [rv.text for rv in usable if rv.text][: cfg.item_text_max_reviews]
        title = titles.get(item, "")
        text = compose_item_text(
            title,
            reviews=snippets,
            review_chars=cfg.review_trim_chars,
            max_chars=cfg.item_text_max_chars,
            category=cfg.amazon2023_reviews_category,
        )
        if not text:
            continue
        rows.append(
            {
                "item_id": item,
                "category": cfg.amazon2023_reviews_category,
                "subcategory": "",
                "title": title,
                "description": "",
                "store": "",
                "price": float("nan"),
                "text": text,
                "source": SOURCE,
            }
        )
    return rows


def load_amazon2023(cfg: Config, skips: SkipLog) -> SourceData:
    users = _read_users(cfg, skips)
    keep = sample_users(list(users), cfg, SOURCE)
    users = {u: v for u, v in users.items() if u in keep}
    for u, v in users.items():
        if v["target"] is None:
            skips.add(SOURCE, "user_without_target", u)
    raw_titles = load_titles([shared_data_path(cfg, rel) for rel in cfg.amazon2023_titles_files], skips)
    reviews, primary = _reviews(users, cfg)
    titles: dict[str, str] = {}
    for rv in reviews:
        raw = users[rv.user_id]["reviews"][(rv.item_id, rv.timestamp)]
        title = raw_titles.get(rv.item_id) or raw_titles.get(str(raw.get("asin")))
        if title:
            titles[rv.item_id] = title
    sel = select_targets(reviews, primary, set(titles), cfg, skips)
    category = cfg.amazon2023_reviews_category
    interactions = [
        {
            "user_id": rv.user_id,
            "item_id": rv.item_id,
            "rating": rv.rating,
            "review_title": rv.title,
            "review_text": rv.text,
            "timestamp": rv.timestamp,
            "category": category,
            "source": SOURCE,
        }
        for rv in reviews
        if rv.idx not in sel.dropped
    ]
    targets = []
    for idx, rule in sorted(sel.accepted.items()):
        rv = reviews[idx]
        targets.append(
            {
                "qid": make_qid(SOURCE, rv.user_id, rv.timestamp),
                "user_id": rv.user_id,
                "item_id": rv.item_id,
                "timestamp": rv.timestamp,
                "rating": rv.rating,
                "review_title": rv.title,
                "review_text": rv.text,
                "category": category,
                "raw_query": "",
                "rule": rule,
                "source": SOURCE,
            }
        )
    skips.add(SOURCE, "history_review_repeats_target", n=len(sel.dropped))
    items = _item_rows(sel, titles, cfg)
    notes = {
        "users": len(users),
        "reviews": len(reviews),
        "distinct_items": len(sel.by_item),
        "items_with_title": len(titles),
        "items_with_text": len(items),
        "items_without_text": len(sel.by_item) - len(items),
        "reviews_banned_from_item_text": len(sel.banned),
    }
    return SourceData(items_frame(items), interactions_frame(interactions), targets_frame(targets), notes)
