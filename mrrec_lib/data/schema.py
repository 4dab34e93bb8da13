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
    "query_builder": "string",  # shared / c4 / extractive / llm
    "source": "string",
    "title_overlap": "int64",  # content words of `query` in the target's title (data/overlap.py)
    "title_overlap_raw": "int64",  # the same for `raw_query`
}

TABLES = {"items": ITEM_COLUMNS, "interactions": INTERACTION_COLUMNS, "queries": QUERY_COLUMNS}


class SchemaError(ValueError):
    """A table that does not have the unified schema."""


REQUIRED: dict[str, tuple[str, ...]] = {  # columns that may not be empty in any record
    "items": ("item_id", "text"),
    "interactions": ("user_id", "item_id"),
    "queries": ("qid", "user_id", "target_item_id", "query", "split"),
}
UNIQUE: dict[str, tuple[str, ...]] = {
    "items": ("item_id",),
    "interactions": ("user_id", "item_id", "timestamp"),
    "queries": ("qid",),
}


def _where(table: str, where: str) -> str:
    return f"{table}{f' ({where})' if where else ''}"


def _coerce(series: pd.Series, dtype: str, name: str) -> pd.Series:
    if dtype == "string":
        return series.fillna("").astype(str)
    values = pd.to_numeric(series, errors="coerce")
    if dtype == "int64":
        bad = values.isna() | (values != values.round())
        if bad.any():
            i = bad.idxmax()
            raise SchemaError(f"column {name!r}, record {i}: {series[i]!r} is not an integer")
    return values.astype(dtype)


def validate(df: pd.DataFrame, table: str, where: str = "") -> pd.DataFrame:
    """Check columns and records, coerce dtypes; raise naming the table, the file, the column and the record."""
    cols = TABLES[table]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(f"{_where(table, where)}: missing column(s) {missing}")
    out = df[list(cols)].copy()
    for c, dtype in cols.items():
        try:
            out[c] = _coerce(out[c], dtype, c)
        except (ValueError, TypeError) as e:
            raise SchemaError(f"{_where(table, where)}: {e}") from e
    for c in REQUIRED[table]:
        empty = out[c].str.strip().eq("")
        if empty.any():
            raise SchemaError(f"{_where(table, where)}: column {c!r} is empty in record {empty.idxmax()}")
    dup = out.duplicated(list(UNIQUE[table]))
    if dup.any():
        i = dup.idxmax()
        key = {c: out.at[i, c] for c in UNIQUE[table]}
        raise SchemaError(f"{_where(table, where)}: duplicate record {i} for key {key}")
    if table == "queries":
        bad = ~out["split"].isin(("train", "val", "test"))
        if bad.any():
            i = bad.idxmax()
            raise SchemaError(f"{_where(table, where)}: record {i} has split {out.at[i, 'split']!r}")
    return out


def read_table(data_dir: Path, table: str) -> pd.DataFrame:
    """Read `<data_dir>/<table>.parquet` written by stage 01 and validate it."""
    path = data_dir / f"{table}.parquet"
    if not path.exists():
        from mrrec_lib.runs import MissingStageError

        raise MissingStageError(f"{path} is missing: stage 01_data_prep has not run for this run folder")
    return validate(pd.read_parquet(path), table, str(path))
