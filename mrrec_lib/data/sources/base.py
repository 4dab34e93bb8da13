"""What every source hands to stage 01: items, interactions, and query targets.

A *target* is one (user, held-out review) pair a query will be written from.
It always exists as an interaction too (at `timestamp`), so that a query's
history is simply the user's interactions strictly before it, and the leakage
check can find the review it must never see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS

TARGET_COLUMNS: dict[str, str] = {
    "qid": "string",
    "user_id": "string",
    "item_id": "string",
    "timestamp": "int64",
    "rating": "float64",
    "review_title": "string",
    "review_text": "string",
    "category": "string",  # the target item's top-level (Amazon 2023 file) category
    "raw_query": "string",  # a request the source already has (Amazon-C4), else empty
    "rule": "string",  # heldout / earlier_review / review / c4
    "source": "string",
}
# No field of the target item itself (title, brand, category path) is here: a request
# writer must see what Amazon-C4's writer saw, the review alone (`data/queries.py`).

RULES = ("heldout", "earlier_review", "review", "c4")


@dataclass
class SourceData:
    items: pd.DataFrame
    interactions: pd.DataFrame
    targets: pd.DataFrame
    notes: dict[str, Any] = field(default_factory=dict)  # source-specific counts for the report


def frame(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly `columns` in order (also when `rows` is empty)."""
    df = pd.DataFrame(rows, columns=list(columns))
    for c, dtype in columns.items():
        if dtype == "string":
            df[c] = df[c].fillna("").astype(str)
        elif dtype == "int64":
            df[c] = df[c].astype("int64")
        else:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(dtype)
    return df


def items_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return frame(rows, ITEM_COLUMNS)


def interactions_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return frame(rows, INTERACTION_COLUMNS)


def targets_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return frame(rows, TARGET_COLUMNS)


def sample_users(user_ids: list[str], cfg: Config, salt: str) -> set[str]:
    """`cfg.max_users` users of one source, seeded and independent of file order (all when 0)."""
    users = sorted(set(user_ids))
    if cfg.max_users <= 0 or len(users) <= cfg.max_users:
        return set(users)
    rng = np.random.default_rng([cfg.seed, sum(salt.encode())])
    return set(rng.choice(users, size=cfg.max_users, replace=False).tolist())


def make_qid(source: str, user_id: str, timestamp: int) -> str:
    return f"{source}:{user_id}:{timestamp}"
