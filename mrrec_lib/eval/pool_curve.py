"""How each system's accuracy falls as distractors join the pool: the pool-size curve.

The base pools hold a few thousand items, the paper ranks against ~1M; the curve shows
whether a system's ordering against the baselines survives a realistic pool. Every point
uses the same requests and the same retrieved texts: sub-pool f = the base items + the
first round(f * D) of the D distractors in one seeded random order, so the sub-pools are
nested and a text's curve can only fall. Each text is scored against the full pool once
(`ItemRetriever.nested_ranks`), not once per pool size; for BM25 this means term statistics
(IDF, average length) of the full pool at every point, so only the competitors change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mrrec_lib.data.distractors import is_distractor
from mrrec_lib.eval.metrics import metrics_from_ranks
from mrrec_lib.retrieval.items import ItemRetriever

PER_QUERY_COLUMNS = ("system", "qid", "text", "target_item_id")


def distractor_tiers(
    retriever: ItemRetriever, items: pd.DataFrame, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted fractions, sub-pool sizes, tier per pool row) for `ItemRetriever.nested_ranks`.

    Base items are tier 0 (in every sub-pool); the distractor at position i of the seeded
    permutation is in sub-pool j when i < round(fraction_j * D). The permutation depends only on
    `seed` and which pool rows are distractors, so separate calls (dense and BM25 systems) share it.
    """
    missing = [c for c in ("item_id", "source") if c not in items.columns]
    if missing:
        raise KeyError(f"items table lacks column(s) {missing} (the pool-size curve needs item_id and source)")
    if len(items) != len(retriever):
        raise ValueError(f"items has {len(items)} rows but the retriever's pool {len(retriever)}: pass the same pool")
    fr = np.unique(np.asarray(list(fractions), dtype=float))
    if len(fr) == 0 or fr.min() < 0 or fr.max() > 1:
        raise ValueError(f"fractions must be a non-empty list within [0, 1], got {list(fractions)}")
    rows = retriever.positions(items["item_id"].astype(str).tolist())
    dx_rows = np.sort(rows[is_distractor(items["source"]).to_numpy()])
    cut = np.array([int(round(f * len(dx_rows))) for f in fr], dtype=np.int64)
    tier = np.zeros(len(retriever), dtype=np.int64)
    order = np.random.default_rng(seed).permutation(dx_rows)
    tier[order] = np.searchsorted(cut, np.arange(len(order)), side="right")
    return fr, (len(retriever) - len(dx_rows)) + cut, tier


def pool_curve_ranks(
    retriever: ItemRetriever,
    items: pd.DataFrame,
    per_query: pd.DataFrame,
    fractions: Sequence[float],
    seed: int,
    exclude: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """Per (system, qid, fraction): pool_size and the target's rank (inf for an empty text: nothing retrieved).

    `per_query` has columns system, qid, text (the retrieved text) and target_item_id; `items` is the
    retriever's pool with `source` (distractors start with "distractor:"). `exclude[qid]` (e.g. the
    user's earlier items) is removed from every sub-pool of that request. All texts are scored with
    this one retriever: systems that retrieve with another kind go in a call with that retriever.
    """
    missing = [c for c in PER_QUERY_COLUMNS if c not in per_query.columns]
    if missing:
        raise KeyError(f"per_query lacks column(s) {missing} (needs {list(PER_QUERY_COLUMNS)})")
    if per_query.empty:
        raise ValueError("per_query is empty: no request to draw a pool-size curve for")
    fr, sizes, tier = distractor_tiers(retriever, items, fractions, seed)
    texts = per_query["text"].fillna("").astype(str).tolist()
    targets = per_query["target_item_id"].astype(str).tolist()
    qids = per_query["qid"].astype(str).tolist()
    excl = [tuple(map(str, (exclude or {}).get(q, ()))) for q in qids]
    # systems often return the same text for a request (e.g. an RL run that kept its SFT policy): score it once
    keys = list(zip(texts, targets, excl, strict=True))
    uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    u_texts, u_targets, u_excl = (list(col) for col in zip(*uniq, strict=True))
    ranks = retriever.nested_ranks(u_texts, u_targets, tier, len(fr), u_excl if exclude else None).astype(float)
    ranks[np.array([not t.strip() for t in u_texts])] = np.inf
    per = ranks[[uniq[k] for k in keys]]
    n = len(per_query)
    return pd.DataFrame(
        {
            "system": np.repeat(per_query["system"].astype(str).to_numpy(), len(fr)),
            "qid": np.repeat(np.asarray(qids, dtype=object), len(fr)),
            "fraction": np.tile(fr, n),
            "pool_size": np.tile(sizes, n),
            "rank": per.reshape(-1),
        }
    )


def curve_summary(ranks: pd.DataFrame, ks: Sequence[int] = (10, 100)) -> pd.DataFrame:
    """Long frame system, fraction, pool_size, metric (R@k / N@k), mean, n from `pool_curve_ranks`."""
    metrics = metrics_from_ranks(ranks["rank"].to_numpy(), ks)
    long = pd.concat(
        [ranks[["system", "fraction", "pool_size"]].assign(metric=name, value=v) for name, v in metrics.items()],
        ignore_index=True,
    )
    out = long.groupby(["system", "fraction", "pool_size", "metric"], sort=False)["value"].agg(["mean", "size"])
    return out.rename(columns={"size": "n"}).reset_index()


def pool_size_curve(
    retriever: ItemRetriever,
    items: pd.DataFrame,
    per_query: pd.DataFrame,
    fractions: Sequence[float],
    seed: int,
    exclude: dict[str, list[str]] | None = None,
    ks: Sequence[int] = (10, 100),
) -> pd.DataFrame:
    """`curve_summary` of `pool_curve_ranks`: mean R@k and N@k per system and pool size."""
    return curve_summary(pool_curve_ranks(retriever, items, per_query, fractions, seed, exclude), ks)


def plot_pool_curve(curve: pd.DataFrame, path: str | Path, metric: str = "N@100") -> plt.Figure:
    """`metric` against pool size (log axis), one line per system; saved atomically as a PNG at `path`."""
    sel = curve[curve["metric"] == metric]
    if sel.empty:
        raise ValueError(f"no {metric!r} rows in the curve (metrics: {sorted(curve['metric'].unique())})")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system, g in sel.groupby("system", sort=False):
        g = g.sort_values("pool_size")
        ax.plot(g["pool_size"], g["mean"], marker="o", label=system)
    ax.set_xscale("log")
    ax.set_xlabel("items in the pool (base items + distractors)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} as distractors join the pool (same requests)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return fig
