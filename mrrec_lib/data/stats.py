"""Dataset statistics in the paper's Table 5 form, and request lengths next to real Amazon-C4."""

from __future__ import annotations

import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.runs import shared_data_path


def table5(items: pd.DataFrame, interactions: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    """#queries, #users, #categories, #candidate items, #interactions: overall and per source."""

    def row(q: pd.DataFrame, inter: pd.DataFrame, pool: pd.DataFrame) -> dict[str, int]:
        return {
            "queries": len(q),
            "users": q["user_id"].nunique(),
            "categories": q["category"].nunique(),
            "candidate items": len(pool),
            "interactions": len(inter),
        }

    rows = {"all": row(queries, interactions, items)}
    for source, q in queries.groupby("source", sort=True):
        rows[source] = row(q, interactions[interactions["source"] == source], items[items["source"] == source])
    return pd.DataFrame(rows).T


def real_c4_queries(cfg: Config, rel: str = "amazon_c4_queries") -> pd.DataFrame:
    """The real Amazon-C4 rows in the shared folder (qid, query, category), for length/style comparison."""
    from mrrec_lib.data.readers import read_records
    from mrrec_lib.data.sources.amazon_c4 import query_files

    root = shared_data_path(cfg, rel)
    if not root.exists():
        return pd.DataFrame(columns=["qid", "query", "category"])
    rows = []
    for f in query_files(root):
        for rec in read_records(f, "amazon_c4", SkipLog()):
            if isinstance(rec, dict) and rec.get("query"):
                rows.append({"qid": str(rec.get("qid")), "query": str(rec["query"]), "category": f.parent.name})
    return pd.DataFrame(rows)


def length_summary(texts: pd.Series) -> dict[str, float]:
    chars = texts.fillna("").str.len()
    words = texts.fillna("").str.split().str.len()
    return {
        "n": int(len(texts)),
        "mean_chars": round(float(chars.mean()), 1) if len(texts) else 0.0,
        "median_chars": float(chars.median()) if len(texts) else 0.0,
        "mean_words": round(float(words.mean()), 1) if len(texts) else 0.0,
    }
