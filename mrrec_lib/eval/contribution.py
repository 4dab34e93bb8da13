"""Memory-contribution scores: does the memory the policy retrieved show up where it should?

The paper asks two questions of every memory entry a rollout retrieved through
`memory_retrieval_tool`:

- MPC (memory-to-profile contribution): did the entry make it into the ideal
  item profile the policy wrote?
- MRC (memory-to-relevance contribution): is the entry about the item the user
  really bought (the target's title + description)?

The heuristic answer is keyword overlap: an entry's keywords are its content
words (scikit-learn's English analyser with its stop-word list, plurals folded),
and the entry counts as contributing when at least `threshold` of its keywords
occur in the other text. The threshold-free mean overlap is reported next to
each share so the choice of threshold can be checked. An LLM-judge variant asks
a chat model the same two questions per entry (off by default: it costs two
calls per retrieved entry).

Inputs are the stage-05 per-query results (`metrics/05_per_query.parquet`: the
profile and the ids the tool returned), the run's local memory and its items.
A parse failure leaves an empty profile, so its entries score 0 for MPC rather
than being dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import pandas as pd

from mrrec_lib.llm.base import ChatLLM, Sampling
from mrrec_lib.memory import snapshot_key
from mrrec_lib.runs import RunPaths

DEFAULT_THRESHOLD = 0.2
PAIR_COLUMNS = ["qid", "system", "entry_id", "level", "entry_text", "found", "profile", "target_text"]


@lru_cache(maxsize=1)
def _analyzer():
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_][^\W_]+\b").build_analyzer()


def _fold(token: str) -> str:
    """Fold simple plurals so "beans" in memory matches "bean" in a profile."""
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def keywords(text: str | None) -> frozenset[str]:
    """Content words of `text`: lower-cased alphabetic tokens of 2+ characters, English stop words removed."""
    if not text:
        return frozenset()
    return frozenset(_fold(t) for t in _analyzer()(str(text)))


def overlap(entry_kw: frozenset[str], text_kw: frozenset[str]) -> float:
    """Share of the entry's keywords found in the text; NaN for an entry with no keywords (it cannot count)."""
    if not entry_kw:
        return float("nan")
    return len(entry_kw & text_kw) / len(entry_kw)


def _as_list(ids) -> list[str]:
    if ids is None or (isinstance(ids, float) and np.isnan(ids)):
        return []
    return [str(i) for i in ids]


def retrieved_pairs(per_query: pd.DataFrame, entries: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per (query, distinct retrieved entry) with the entry, the profile and the target's text.

    `per_query` needs qid, user_id, target_timestamp, target_item_id, profile, memory_ids (as stage 05 writes);
    `system` is kept when present. An id absent from the query's snapshot is kept with `found=False`.
    """
    need = {"qid", "user_id", "target_timestamp", "target_item_id", "profile", "memory_ids"}
    missing = need - set(per_query.columns)
    if missing:
        raise KeyError(f"per-query results lack column(s) {sorted(missing)} needed for memory contribution")
    for name, df, cols in (("local memory", entries, {"snapshot", "entry_id", "level", "text"}),
                           ("items", items, {"item_id", "text"})):
        if cols - set(df.columns):
            raise KeyError(f"{name} table lacks column(s) {sorted(cols - set(df.columns))}")
    entry_of = {(s, e): (lvl, t) for s, e, lvl, t in entries[["snapshot", "entry_id", "level", "text"]].itertuples(index=False)}
    item_text = dict(zip(items["item_id"].astype(str), items["text"].fillna("").astype(str), strict=True))
    rows = []
    for r in per_query.to_dict("records"):
        snap = snapshot_key(str(r["user_id"]), int(r["target_timestamp"]))
        for eid in dict.fromkeys(_as_list(r["memory_ids"])):
            level, text = entry_of.get((snap, eid), ("", ""))
            rows.append({
                "qid": str(r["qid"]),
                "system": r.get("system", ""),
                "entry_id": eid,
                "level": level,
                "entry_text": text,
                "found": (snap, eid) in entry_of,
                "profile": r["profile"] if isinstance(r["profile"], str) else "",
                "target_text": item_text.get(str(r["target_item_id"]), ""),
            })
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def score_pairs(pairs: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Add per-entry keyword overlaps with the profile and the target, and the thresholded hits."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    out = pairs.copy()
    ekw = [keywords(t) for t in out["entry_text"]]
    out["n_keywords"] = [len(k) for k in ekw]
    out["profile_overlap"] = [overlap(k, keywords(p)) for k, p in zip(ekw, out["profile"], strict=True)]
    out["target_overlap"] = [overlap(k, keywords(t)) for k, t in zip(ekw, out["target_text"], strict=True)]
    scorable = out["n_keywords"] > 0
    out["mpc_hit"] = np.where(scorable, out["profile_overlap"] >= threshold, np.nan)
    out["mrc_hit"] = np.where(scorable, out["target_overlap"] >= threshold, np.nan)
    return out


def per_query_scores(scored: pd.DataFrame, per_query: pd.DataFrame | None = None) -> pd.DataFrame:
    """MPC/MRC per query: the share of its scorable retrieved entries that hit, and the mean overlaps.

    Queries in `per_query` that retrieved nothing appear with n_retrieved 0 and NaN scores (no memory to judge).
    """
    agg = scored.groupby("qid", sort=True).agg(
        n_retrieved=("entry_id", "size"),
        n_scorable=("n_keywords", lambda s: int((s > 0).sum())),
        mpc=("mpc_hit", "mean"),
        mrc=("mrc_hit", "mean"),
        mpc_overlap=("profile_overlap", "mean"),
        mrc_overlap=("target_overlap", "mean"),
    ).reset_index()
    if per_query is not None:
        allq = pd.DataFrame({"qid": per_query["qid"].astype(str).unique()})
        agg = allq.merge(agg, on="qid", how="left")
        agg[["n_retrieved", "n_scorable"]] = agg[["n_retrieved", "n_scorable"]].fillna(0).astype(int)
    return agg


def summarise(scored: pd.DataFrame, by_query: pd.DataFrame) -> dict:
    """Averages over queries (macro) and over all retrieved entries (micro), overall and per memory level."""
    judged = by_query[by_query["n_scorable"] > 0]
    levels = {}
    for level, g in scored.groupby("level"):
        levels[level or "unknown"] = {
            "n_entries": len(g),
            "mpc": float(g["mpc_hit"].mean()) if g["mpc_hit"].notna().any() else None,
            "mrc": float(g["mrc_hit"].mean()) if g["mrc_hit"].notna().any() else None,
        }
    return {
        "n_queries": len(by_query),
        "n_queries_with_memory": len(judged),
        "n_entries": len(scored),
        "n_entries_unresolved": int((~scored["found"].astype(bool)).sum()) if len(scored) else 0,
        "mpc": float(judged["mpc"].mean()) if len(judged) else None,
        "mrc": float(judged["mrc"].mean()) if len(judged) else None,
        "mpc_overlap": float(judged["mpc_overlap"].mean()) if len(judged) else None,
        "mrc_overlap": float(judged["mrc_overlap"].mean()) if len(judged) else None,
        "mpc_micro": float(scored["mpc_hit"].mean()) if scored["mpc_hit"].notna().any() else None,
        "mrc_micro": float(scored["mrc_hit"].mean()) if scored["mrc_hit"].notna().any() else None,
        "per_level": levels,
    }


def contribution_from_run(
    paths: RunPaths, system: str = "mrrec", threshold: float = DEFAULT_THRESHOLD
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(scored pairs, per-query scores, summary) for one evaluated system of a run folder."""
    from mrrec_lib.data.schema import read_table

    pq = pd.read_parquet(paths.require(paths.metrics / "05_per_query.parquet", "05"))
    pq = pq[pq["system"] == system] if "system" in pq.columns else pq
    if pq.empty:
        raise ValueError(f"{paths.metrics / '05_per_query.parquet'} has no rows for system {system!r}")
    entries = pd.read_parquet(paths.require(paths.memory / "local_entries.parquet", "02"))
    items = read_table(paths.data, "items")
    scored = score_pairs(retrieved_pairs(pq, entries, items), threshold)
    by_query = per_query_scores(scored, pq)
    return scored, by_query, summarise(scored, by_query)


_JUDGE_QUESTIONS = {
    "profile": (
        "Below is a memory entry about a shopper and an item profile an assistant wrote for them.\n"
        "Memory entry: {entry}\n\nItem profile: {other}\n\n"
        "Does the item profile use information from the memory entry? Answer only yes or no."
    ),
    "target": (
        "Below is a memory entry about a shopper and the item they bought.\n"
        "Memory entry: {entry}\n\nItem bought: {other}\n\n"
        "Is the memory entry relevant to choosing this item? Answer only yes or no."
    ),
}
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str) -> bool | None:
    """The first yes/no word of a reply; None when there is none (a malformed judgement)."""
    m = _YES_NO.search(text or "")
    return None if m is None else m.group(1).lower() == "yes"


def judge_pairs(
    llm: ChatLLM,
    pairs: pd.DataFrame,
    sampling: Sampling | None = None,
    questions: Iterable[str] = ("profile", "target"),
    max_chars: int = 1200,
) -> pd.DataFrame:
    """LLM-judge MPC/MRC: one yes/no question per (entry, profile) and (entry, target item).

    An unparseable reply is counted in `judge_<q>_malformed` and scored 0, never raised.
    """
    sampling = sampling or Sampling(temperature=0.0, max_new_tokens=8)
    out = pairs.copy()
    for q in questions:
        other = out["profile"] if q == "profile" else out["target_text"]
        convs = [
            [{"role": "user", "content": _JUDGE_QUESTIONS[q].format(entry=e[:max_chars], other=o[:max_chars])}]
            for e, o in zip(out["entry_text"], other, strict=True)
        ]
        replies = llm.chat(convs, sampling, n=1) if convs else []
        verdicts = [parse_yes_no(r[0] if r else "") for r in replies]
        out[f"judge_{q}"] = [float(v) if v is not None else 0.0 for v in verdicts]
        out[f"judge_{q}_malformed"] = [v is None for v in verdicts]
    return out


def summarise_judge(judged: pd.DataFrame) -> dict:
    """Macro (per query, then averaged) judge scores and the malformed-reply counts."""
    res: dict = {"n_entries": len(judged)}
    for q, name in (("profile", "mpc_judge"), ("target", "mrc_judge")):
        col = f"judge_{q}"
        if col in judged:
            res[name] = float(judged.groupby("qid")[col].mean().mean()) if len(judged) else None
            res[f"{name}_malformed"] = int(judged[f"{col}_malformed"].sum())
    return res
