"""Which memories to build, and the exact history each one may see.

A snapshot's history is the user's interactions with `timestamp <
target_timestamp`: the target review and every later review are out by
construction. Interactions are joined with item metadata once, as plain dicts,
because every builder (and the content hashes that share work between
snapshots) reads the same few fields.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mrrec_lib.data.text import clean_text
from mrrec_lib.memory import snapshot_key

Record = dict[str, Any]  # one interaction joined with its item: see `history_records`

_RECORD_FIELDS = (
    "item_id",
    "title",
    "store",
    "price",
    "description",
    "subcategory",
    "rating",
    "review_title",
    "review_text",
    "timestamp",
    "group",
)


def query_snapshots(queries: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (user_id, target_timestamp) among the queries, in a stable order."""
    missing = {"user_id", "target_timestamp"} - set(queries.columns)
    if missing:
        raise KeyError(f"queries table lacks column(s) {sorted(missing)} needed to define memory snapshots")
    snaps = queries[["user_id", "target_timestamp"]].drop_duplicates().copy()
    snaps["target_timestamp"] = snaps["target_timestamp"].astype("int64")
    snaps = snaps.sort_values(["user_id", "target_timestamp"], kind="stable").reset_index(drop=True)
    snaps.insert(
        0, "snapshot", [snapshot_key(u, t) for u, t in zip(snaps.user_id, snaps.target_timestamp, strict=True)]
    )
    return snaps


def _group_name(category: str, subcategory: str, by: str) -> str:
    if by == "subcategory" and subcategory:
        return subcategory
    return category or subcategory or "Other"


def history_records(
    interactions: pd.DataFrame, items: pd.DataFrame, group_by: str = "subcategory"
) -> dict[str, list[Record]]:
    """Every user's interactions joined with item metadata, sorted by time (ties by item id).

    `group` is the category a preference pattern summarises: the item's
    subcategory when known and `group_by == "subcategory"` (a user's history is
    often one top-level category, so subcategories carry the structure the
    paper's multi-category histories have), else the interaction's category.
    """
    meta = items[["item_id", "title", "store", "price", "description", "subcategory", "category"]].drop_duplicates(
        "item_id"
    )
    df = interactions.merge(meta, on="item_id", how="left", suffixes=("", "_item"))
    for col in (
        "title",
        "store",
        "description",
        "subcategory",
        "category",
        "category_item",
        "review_title",
        "review_text",
    ):
        df[col] = df[col].map(clean_text) if col in df else ""
    df["category"] = [c or ci for c, ci in zip(df["category"], df["category_item"], strict=True)]
    df["group"] = [_group_name(c, s, group_by) for c, s in zip(df["category"], df["subcategory"], strict=True)]
    df["price"] = pd.to_numeric(df["price"], errors="coerce")
    df = df.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    out: dict[str, list[Record]] = {}
    for user, rows in df.groupby("user_id", sort=False):
        recs = rows[list(_RECORD_FIELDS)].to_dict("records")
        for r in recs:
            r["price"] = None if pd.isna(r["price"]) else round(float(r["price"]), 2)
            r["rating"] = None if pd.isna(r["rating"]) else float(r["rating"])
            r["timestamp"] = int(r["timestamp"])
        out[str(user)] = recs
    return out


@dataclass(frozen=True)
class Snapshot:
    key: str
    user_id: str
    target_timestamp: int
    records: list[Record]


def snapshot_history(histories: dict[str, list[Record]], user_id: str, ts: int) -> list[Record]:
    """The user's records strictly before `ts` (histories are time-sorted)."""
    recs = histories.get(user_id, [])
    cut = bisect.bisect_left([r["timestamp"] for r in recs], int(ts))
    return recs[:cut]


def iter_snapshots(snaps: pd.DataFrame, histories: dict[str, list[Record]]) -> list[Snapshot]:
    return [
        Snapshot(key, user, int(ts), snapshot_history(histories, user, int(ts)))
        for key, user, ts in zip(snaps.snapshot, snaps.user_id, snaps.target_timestamp, strict=True)
    ]
