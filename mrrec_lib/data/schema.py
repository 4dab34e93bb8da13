"""The unified tables every source produces and every later stage reads.

Validation is strict and loud: a missing column names itself, because a
silently-empty `review_text` column would quietly turn memory into noise.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ITEM_COLUMNS: dict[str, str] = {
    "item_id": "string",
    "category": "string",
    "subcategory": "string",
    "title": "string",
    "description": "string",
    "store": "string",
    "price": "float64",  # NaN when unknown
    "text": "string",  # what the item retriever embeds: title + description (+ store)
    "source": "string",
}

INTERACTION_COLUMNS: dict[str, str] = {
    "user_id": "string",
    "item_id": "string",
    "rating": "float64",
    "review_title": "string",
    "review_text": "string",
    "timestamp": "int64",  # ms since epoch, or the position in the history when a source has no time
    "category": "string",
    "source": "string",
}

QUERY_COLUMNS: dict[str, str] = {
    "qid": "string",
    "user_id": "string",
    "target_item_id": "string",
    "category": "string",
    "raw_query": "string",  # C4-style first-person request
    "query": "string",  # MR.Rec's simplified one-sentence request (what the policy sees)
    "split": "string",  # train / val / test
    "target_timestamp": "int64",  # history for this query = the user's interactions strictly before it
    "query_builder": "string",  # c4 / extractive / llm
    "source": "string",
}

TABLES = {"items": ITEM_COLUMNS, "interactions": INTERACTION_COLUMNS, "queries": QUERY_COLUMNS}


class SchemaError(ValueError):
    """A table that does not have the unified schema."""


def validate(df: pd.DataFrame, table: str, where: str = "") -> pd.DataFrame:
    """Check columns exist and coerce dtypes; raise naming the table, the column and the file."""
    cols = TABLES[table]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(f"{table}{f' ({where})' if where else ''}: missing column(s) {missing}")
    out = df[list(cols)].copy()
    for c, dtype in cols.items():
        try:
            if dtype == "string":
                out[c] = out[c].fillna("").astype(str)
            else:
                out[c] = pd.to_numeric(out[c], errors="raise").astype(dtype) if dtype == "int64" else pd.to_numeric(out[c], errors="coerce").astype(dtype)
        except (ValueError, TypeError) as e:
            raise SchemaError(f"{table}{f' ({where})' if where else ''}: column {c!r} is not {dtype}: {e}") from e
    return out


def read_table(data_dir: Path, table: str) -> pd.DataFrame:
    """Read `<data_dir>/<table>.parquet` written by stage 01 and validate it."""
    path = data_dir / f"{table}.parquet"
    if not path.exists():
        from mrrec_lib.runs import MissingStageError

        raise MissingStageError(f"{path} is missing: stage 01_data_prep has not run for this run folder")
    return validate(pd.read_parquet(path), table, str(path))
