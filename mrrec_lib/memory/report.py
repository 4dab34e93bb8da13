"""Views of built memory for notebook 02: one snapshot's memory tree and the entries-per-snapshot figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from mrrec_lib.data.text import is_long, leak_key, normalise
from mrrec_lib.memory import snapshot_key
from mrrec_lib.memory.extractive import short
from mrrec_lib.memory.local import LEVELS


def memory_tree(entries: pd.DataFrame, max_chars: int = 150) -> str:
    """One snapshot's entries as a text tree: records, patterns per category, profile."""
    if entries.empty:
        return "(no entries)"
    lines = [f"snapshot {entries['snapshot'].iloc[0]}"]
    present = [lv for lv in LEVELS if (entries["level"] == lv).any()]
    for li, level in enumerate(present):
        last_level = li == len(present) - 1
        rows = entries[entries["level"] == level]
        lines.append(f"{'└' if last_level else '├'}── {level} ({len(rows)} entries)")
        pad = "    " if last_level else "│   "
        groups = list(rows.groupby("category", sort=False)) if level == "pattern" else [("", rows)]
        for gi, (cat, grp) in enumerate(groups):
            inner = pad
            if cat:
                last_group = gi == len(groups) - 1
                lines.append(f"{pad}{'└' if last_group else '├'}── {cat}")
                inner = pad + ("    " if last_group else "│   ")
            for ri, r in enumerate(grp.itertuples()):
                branch = "└" if ri == len(grp) - 1 else "├"
                lines.append(f"{inner}{branch}── [{r.entry_id}] {short(r.text, max_chars)}")
    return "\n".join(lines)


def entries_per_snapshot_figure(entries: pd.DataFrame) -> plt.Figure:
    """Left: histogram of entries per snapshot. Right: every snapshot's entries by level, sorted by size."""
    counts = entries.groupby(["snapshot", "level"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=[lv for lv in LEVELS if lv in counts.columns])
    total = counts.sum(axis=1)
    counts = counts.loc[total.sort_values(kind="stable").index]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    left.hist(total, bins=range(0, int(total.max()) + 2) if len(total) else 10, color="0.4")
    left.axvline(total.mean(), color="black", ls="--", lw=1, label=f"mean {total.mean():.1f}")
    left.set(xlabel="entries per snapshot", ylabel="snapshots", title=f"Local memory size ({len(total)} snapshots)")
    left.legend()
    x = range(len(counts))
    right.stackplot(x, *[counts[c] for c in counts.columns], labels=list(counts.columns), step="mid")
    right.set(xlabel="snapshots, sorted by size", ylabel="entries", title="Entries by level")
    right.legend(loc="upper left")
    fig.tight_layout()
    return fig


def target_review_leaks(
    entries: pd.DataFrame, queries: pd.DataFrame, interactions: pd.DataFrame, min_words: int
) -> list[str]:
    """Snapshots whose memory contains the opening words of their own target review (should be none).

    A snapshot covers every query with its (user, target time); the target review is the user's interaction with
    the target item at that time. Reviews shorter than `min_words` are too generic to test and are skipped.
    """
    reviews = interactions.set_index(["user_id", "item_id", "timestamp"])["review_text"]
    text = entries.groupby("snapshot")["text"].agg(" ".join).map(normalise)
    leaks = []
    for q in queries.itertuples():
        snap = snapshot_key(q.user_id, q.target_timestamp)
        review = reviews.get((q.user_id, q.target_item_id, q.target_timestamp), "")
        if isinstance(review, pd.Series):
            review = " ".join(review.astype(str))
        if snap in text.index and is_long(review, min_words) and leak_key(review, min_words) in text[snap]:
            leaks.append(snap)
    return sorted(set(leaks))
