"""Per-user train/val/test splits and the history a query may see.

All queries of a user share one split, so no user's memory or reviews are
seen in training and tested on later. Two ways to size the splits:
- by request counts (`split_test_queries` > 0, the default): users in one
  seeded shuffle are drawn whole into test until it holds that many requests,
  then into val until it holds `split_val_queries`, the rest is train. A test
  split sized in requests is what decides the smallest difference it can detect;
- by ratios of users (`split_ratios`), shuffled per source so every split holds
  every source in proportion.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def _counts(n: int, ratios: list[float]) -> tuple[int, int]:
    total = sum(ratios)
    n_train = int(round(n * ratios[0] / total))
    n_val = int(round(n * ratios[1] / total))
    n_val = min(n_val, n - n_train)
    return n_train, n_val


def assign_splits(queries: pd.DataFrame, ratios: list[float], seed: int) -> pd.Series:
    """The split of every query (index-aligned), decided per user, seeded, stratified by source."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split_ratios must be three non-negative numbers (train, val, test), got {ratios}")
    user_source = queries.groupby("user_id", sort=True)["source"].first()
    split_of: dict[str, str] = {}
    for source, users in user_source.groupby(user_source, sort=True):
        salt = int(hashlib.sha1(str(source).encode()).hexdigest()[:8], 16)
        order = np.random.default_rng([seed, salt]).permutation(sorted(users.index))
        n_train, n_val = _counts(len(order), ratios)
        for i, user in enumerate(order):
            split_of[user] = SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2]
    return queries["user_id"].map(split_of).rename("split")


def assign_sized_splits(queries: pd.DataFrame, test_queries: int, val_queries: int, seed: int) -> pd.Series:
    """The split of every query (index-aligned): whole users, in a seeded shuffle, fill test then val; rest train.

    Each split ends with the user that brings it to (or past) its size. Too few
    requests to fill test and val and leave a train user is an error naming the keys.
    """
    if test_queries <= 0 or val_queries < 0:
        raise ValueError(
            f"split_test_queries must be > 0 and split_val_queries >= 0, got {test_queries}, {val_queries}"
        )
    per_user = queries.groupby("user_id", sort=True).size()
    order = np.random.default_rng(seed).permutation(per_user.index.to_numpy())
    split_of: dict[str, str] = {}
    filled = {"test": 0, "val": 0}
    for user in order:
        split = "test" if filled["test"] < test_queries else "val" if filled["val"] < val_queries else "train"
        split_of[user] = split
        if split != "train":
            filled[split] += int(per_user[user])
    if filled["test"] < test_queries or filled["val"] < val_queries or "train" not in split_of.values():
        raise ValueError(
            f"{len(queries)} requests of {len(per_user)} users cannot fill split_test_queries={test_queries} and "
            f"split_val_queries={val_queries} and leave users for train; lower them (0: use split_ratios)"
        )
    return queries["user_id"].map(split_of).rename("split")


def history_for(interactions: pd.DataFrame, user_id: str, before_ts: int) -> pd.DataFrame:
    """The user's interactions strictly before `before_ts`, oldest first (what memory and baselines may use)."""
    rows = interactions[(interactions["user_id"] == user_id) & (interactions["timestamp"] < before_ts)]
    return rows.sort_values(["timestamp", "item_id"], kind="stable").reset_index(drop=True)


def history_lengths(interactions: pd.DataFrame, queries: pd.DataFrame) -> pd.Series:
    """Number of interactions before each query's target (index-aligned with `queries`)."""
    times = {u: np.sort(g.to_numpy()) for u, g in interactions.groupby("user_id")["timestamp"]}
    return pd.Series(
        [
            int(np.searchsorted(times.get(u, np.empty(0, dtype="int64")), ts, side="left"))
            for u, ts in zip(queries["user_id"], queries["target_timestamp"], strict=True)
        ],
        index=queries.index,
        name="history_length",
    )
