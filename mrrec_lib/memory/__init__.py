"""Hierarchical user memory: local (records / patterns / profile per snapshot) and global (aspects per category).

Memory is keyed by *snapshot* = (user_id, target_timestamp) of a query, built
only from the user's interactions strictly before that timestamp, so no query
ever sees its own target review or anything written after it.
"""

from __future__ import annotations


def snapshot_key(user_id: str, ts: int) -> str:
    """The id of a user's memory as of time `ts`: readable, and stable across runs."""
    return f"{user_id}@{int(ts)}"


__all__ = ["snapshot_key"]
