"""The paper's data: Amazon-C4 queries and item pool, with the users' Amazon Reviews 2023 histories.

Files (downloaded from the Hub with `hf_hub_download` only when no local path is configured):
- queries: Amazon-C4 `test.csv` (or a JSON list / JSONL in the same columns, or a folder of them):
  `qid, query, item_id, user_id, ori_rating, ori_review`;
- pool: `sampled_item_metadata_1M.jsonl`, lines `{item_id, category, metadata = title + description}`;
- histories: Amazon Reviews 2023 `<Category>.jsonl` (reviews) and `meta_<Category>.jsonl` (item metadata).

History = the user's reviews strictly before the target review, found by user
and item whose text matches `ori_review`.
When the target review is not in the review files, every review of the target
item is removed instead and the query is counted under `target_review_not_found`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.data.readers import SkipLog, iter_jsonl, read_records, require_keys
from mrrec_lib.data.sources.base import (
    SourceData,
    interactions_frame,
    items_frame,
    sample_users,
    targets_frame,
)
from mrrec_lib.data.text import (
    clean_text,
    compose_item_text,
    first_sentence,
    is_long,
    leak_key,
    normalise,
    parse_price,
    trim,
)
from mrrec_lib.runs import resolve

SOURCE = "amazon_c4"
QUERY_KEYS = ("qid", "query", "item_id", "user_id")
POOL_KEYS = ("item_id", "category", "metadata")
REVIEW_KEYS = ("user_id", "timestamp", "rating")

Downloader = Callable[[str, str], Path]


def hub_download(repo_id: str, filename: str) -> Path:
    """One file of a Hub dataset repo (cached by huggingface_hub; needs network unless already cached)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))


def query_files(path: Path) -> list[Path]:
    """A query file, or every test.csv / *.json / *.jsonl below a folder (one per category, like Rec-R1's subsets)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".csv", ".json", ".jsonl") and p.is_file())
        if not files:
            raise FileNotFoundError(f"{SOURCE}: no .csv/.json/.jsonl query files under {path}")
        return files
    return [path]


def review_files(cfg: Config, download: Downloader) -> list[tuple[str, Path, Path | None]]:
    """(category, reviews file, meta file or None) for the history categories."""
    if cfg.amazon_reviews_dir:
        root = resolve(cfg.amazon_reviews_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"{SOURCE}: amazon_reviews_dir {root} is not a folder")
        cats = cfg.amazon_reviews_categories or sorted(
            p.stem for p in root.glob("*.jsonl") if not p.name.startswith("meta_")
        )
        out = []
        for cat in cats:
            reviews = root / f"{cat}.jsonl"
            if not reviews.exists():
                raise FileNotFoundError(f"{SOURCE}: review file {reviews} not found (amazon_reviews_categories)")
            meta = root / f"meta_{cat}.jsonl"
            out.append((cat, reviews, meta if meta.exists() else None))
        return out
    if not cfg.amazon_reviews_categories:
        raise ValueError(
            f"{SOURCE}: set amazon_reviews_dir (local files) or amazon_reviews_categories (Hub download, e.g. "
            "['All_Beauty']); downloading every Amazon 2023 category is hundreds of GB"
        )
    return [
        (
            cat,
            download(cfg.amazon_reviews_repo, f"raw/review_categories/{cat}.jsonl"),
            download(cfg.amazon_reviews_repo, f"raw/meta_categories/meta_{cat}.jsonl"),
        )
        for cat in cfg.amazon_reviews_categories
    ]


def load_queries(cfg: Config, skips: SkipLog, download: Downloader) -> list[dict[str, Any]]:
    path = (
        resolve(cfg.amazon_c4_queries_path) if cfg.amazon_c4_queries_path else download(cfg.amazon_c4_repo, "test.csv")
    )
    rows, seen = [], set()
    for f in query_files(path):
        for i, rec in enumerate(read_records(f, SOURCE, skips)):
            where = f"{f.name}:{i}"
            if not isinstance(rec, dict) or require_keys(rec, QUERY_KEYS):
                skips.add(SOURCE, "malformed_query_row", where)
                continue
            if not clean_text(rec["query"]):
                skips.add(SOURCE, "empty_query", where)
                continue
            qid = str(rec["qid"])
            if qid in seen:
                skips.add(SOURCE, "duplicate_qid", where)
                continue
            seen.add(qid)
            try:
                rating = float(rec.get("ori_rating") or "nan")
            except (TypeError, ValueError):
                rating = float("nan")
            rows.append(
                {
                    "qid": qid,
                    "query": clean_text(rec["query"]),
                    "item_id": str(rec["item_id"]),
                    "user_id": str(rec["user_id"]),
                    "rating": rating,
                    "review": clean_text(rec.get("ori_review")),
                }
            )
    return rows


def pool_item(obj: dict[str, Any], cfg: Config) -> dict[str, Any]:
    metadata = clean_text(obj["metadata"])
    title = trim(first_sentence(metadata), 200)
    description = metadata[len(title) :].strip() if metadata.startswith(title) else metadata
    category = clean_text(obj["category"])
    return {
        "item_id": str(obj["item_id"]),
        "category": category,
        "subcategory": "",
        "title": title,
        "description": description,
        "store": "",
        "price": float("nan"),
        "text": compose_item_text(title, description, max_chars=cfg.item_text_max_chars, category=category),
        "source": SOURCE,
    }


def load_pool(cfg: Config, skips: SkipLog, download: Downloader) -> dict[str, dict[str, Any]]:
    path = (
        resolve(cfg.amazon_c4_items_path)
        if cfg.amazon_c4_items_path
        else download(cfg.amazon_c4_repo, "sampled_item_metadata_1M.jsonl")
    )
    wanted = set(cfg.amazon_c4_categories)
    pool: dict[str, dict[str, Any]] = {}
    for lineno, obj in tqdm(iter_jsonl(path, skips, SOURCE), desc="Amazon-C4 pool", mininterval=5):
        if require_keys(obj, POOL_KEYS) or not clean_text(obj["metadata"]):
            skips.add(SOURCE, "malformed_pool_item", f"{path.name}:{lineno}")
            continue
        if wanted and obj["category"] not in wanted:
            continue
        pool.setdefault(str(obj["item_id"]), pool_item(obj, cfg))
    return pool


def meta_item(obj: dict[str, Any], category: str, cfg: Config) -> dict[str, Any]:
    cats = [clean_text(c) for c in obj.get("categories") or [] if clean_text(c)]
    title = clean_text(obj.get("title"))
    store = clean_text(obj.get("store"))
    return {
        "item_id": str(obj["parent_asin"]),
        "category": category,
        "subcategory": cats[1] if len(cats) > 1 else "",
        "title": title,
        "description": clean_text(obj.get("description")),
        "store": store,
        "price": parse_price(obj.get("price")),
        "text": compose_item_text(
            title,
            obj.get("description") or "",
            store,
            obj.get("features") or "",
            max_chars=cfg.item_text_max_chars,
            category=category,
        ),
        "source": SOURCE,
    }


def load_reviews(
    files: list[tuple[str, Path, Path | None]], users: set[str], cfg: Config, skips: SkipLog
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """The users' reviews (user -> sorted list) and the metadata of the items they reviewed."""
    by_user: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
    for category, path, _ in files:
        for lineno, obj in tqdm(iter_jsonl(path, skips, SOURCE), desc=f"reviews {category}", mininterval=5):
            if obj.get("user_id") not in users:
                continue
            item = obj.get("parent_asin") or obj.get("asin")
            if require_keys(obj, REVIEW_KEYS) or not item or not isinstance(obj["timestamp"], int | float):
                skips.add(SOURCE, "malformed_review", f"{path.name}:{lineno}")
                continue
            key = (str(item), int(obj["timestamp"]))
            by_user[obj["user_id"]].setdefault(
                key,
                {
                    "item_id": key[0],
                    "timestamp": key[1],
                    "rating": float(obj["rating"]),
                    "review_title": clean_text(obj.get("title")),
                    "review_text": clean_text(obj.get("text")),
                    "category": category,
                },
            )
    items_needed = {k[0] for reviews in by_user.values() for k in reviews}
    meta: dict[str, dict[str, Any]] = {}
    for category, _, meta_path in files:
        if meta_path is None:
            continue
        for lineno, obj in tqdm(iter_jsonl(meta_path, skips, SOURCE), desc=f"meta {category}", mininterval=5):
            if obj.get("parent_asin") not in items_needed:
                continue
            if not clean_text(obj.get("title")):
                skips.add(SOURCE, "meta_without_title", f"{meta_path.name}:{lineno}")
                continue
            meta.setdefault(str(obj["parent_asin"]), meta_item(obj, category, cfg))
    sorted_reviews = {u: sorted(r.values(), key=lambda x: (x["timestamp"], x["item_id"])) for u, r in by_user.items()}
    return sorted_reviews, meta


def _find_target(reviews: list[dict[str, Any]], q: dict[str, Any], min_words: int) -> dict[str, Any] | None:
    """The user's review of the target item whose text is `ori_review` (any review of it when that is empty)."""
    same_item = [r for r in reviews if r["item_id"] == q["item_id"]]
    if not q["review"]:
        return same_item[-1] if same_item else None
    matches = [r for r in same_item if _repeats(r["review_text"], q["review"], min_words)]
    return matches[-1] if matches else None


def _repeats(text: str, target: str, min_words: int) -> bool:
    nt, nx = normalise(target), normalise(text)
    return bool(nt) and (nt == nx or (is_long(target, min_words) and leak_key(target, min_words) in nx))


def load_amazon_c4(cfg: Config, skips: SkipLog, download: Downloader = hub_download) -> SourceData:
    queries = load_queries(cfg, skips, download)
    keep = sample_users([q["user_id"] for q in queries], cfg, SOURCE)
    queries = [q for q in queries if q["user_id"] in keep]
    pool = load_pool(cfg, skips, download)
    reviews, meta = load_reviews(review_files(cfg, download), keep, cfg, skips)
    for item_id, row in meta.items():
        pool.setdefault(item_id, row)
    interactions: dict[str, list[dict[str, Any]]] = {u: list(r) for u, r in reviews.items()}
    targets: list[dict[str, Any]] = []
    not_found = 0
    for q in sorted(queries, key=lambda q: q["qid"]):
        item = pool.get(q["item_id"])
        if item is None or not item["text"]:
            skips.add(SOURCE, "target_not_in_pool", q["qid"])
            continue
        user_rows = interactions.setdefault(q["user_id"], [])
        target = _find_target(user_rows, q, cfg.leakage_min_words)
        if target is None:
            not_found += 1
            user_rows[:] = [r for r in user_rows if r["item_id"] != q["item_id"]]
            ts = max((r["timestamp"] for r in user_rows), default=0) + 1
            target = {
                "item_id": q["item_id"],
                "timestamp": ts,
                "rating": q["rating"],
                "review_title": "",
                "review_text": q["review"],
                "category": item["category"],
            }
            user_rows.append(target)
        text = target["review_text"] or q["review"]
        repeats = [
            r
            for r in user_rows
            if r is not target
            and r["timestamp"] < target["timestamp"]
            and _repeats(r["review_text"], text, cfg.leakage_min_words)
        ]
        if repeats:
            skips.add(SOURCE, "history_review_repeats_target", q["qid"], n=len(repeats))
            user_rows[:] = [r for r in user_rows if all(r is not x for x in repeats)]
        history = sum(1 for r in user_rows if r["timestamp"] < target["timestamp"])
        if history < cfg.min_history:
            skips.add(SOURCE, "history_too_short", q["qid"])
            continue
        targets.append(
            {
                "qid": f"{SOURCE}:{q['qid']}",
                "user_id": q["user_id"],
                "item_id": q["item_id"],
                "timestamp": target["timestamp"],
                "rating": target["rating"],
                "review_title": target["review_title"],
                "review_text": text,
                "category": item["category"],
                "raw_query": q["query"],
                "rule": "c4",
                "source": SOURCE,
            }
        )
    inter_rows = [{**r, "user_id": u, "source": SOURCE} for u, rows in interactions.items() for r in rows]
    notes = {"queries_read": len(queries), "pool_items": len(pool), "items_with_meta": len(meta),
             "target_review_not_found": not_found}  # fmt: skip
    return SourceData(items_frame(list(pool.values())), interactions_frame(inter_rows), targets_frame(targets), notes)
