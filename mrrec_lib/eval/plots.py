"""Figures of stage 05: metrics per system with user-bootstrap whiskers, and recall per category."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def metric_bars(summary: pd.DataFrame, ks: list[int]) -> plt.Figure:
    """Two panels (Recall@k, nDCG@k): one bar per evaluated system per cutoff, 95% user-level CI whiskers."""
    ok = summary[summary["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=False)
    width = 0.8 / max(1, len(ok))
    x = np.arange(len(ks))
    colors = plt.get_cmap("tab10")
    for ax, prefix, title in ((axes[0], "R", "Recall@k"), (axes[1], "N", "nDCG@k")):
        for i, r in enumerate(ok.to_dict("records")):
            means = np.array([r[f"{prefix}@{k}"] for k in ks])
            lo = means - np.array([r[f"{prefix}@{k}_lo"] for k in ks])
            hi = np.array([r[f"{prefix}@{k}_hi"] for k in ks]) - means
            ax.bar(
                x + (i - (len(ok) - 1) / 2) * width,
                means,
                width,
                yerr=[lo, hi],
                capsize=2,
                label=r["system"],
                color=colors(i % 10),
            )
        ax.set_xticks(x, [f"@{k}" for k in ks])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean over requests (95% CI, users resampled)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    missing = summary.loc[summary["status"] != "ok", "system"].tolist()
    if missing:
        fig.text(0.01, -0.02, f"not run: {', '.join(missing)}", fontsize=8, color="gray")
    fig.tight_layout()
    return fig


def category_bars(categories: pd.DataFrame, metric: str, top: list[str]) -> plt.Figure:
    """`metric` per category (the `top` ones) and system, with 95% user-level CI whiskers."""
    df = categories[(categories["metric"] == metric) & (categories["category"].isin(top))]
    systems = list(dict.fromkeys(df["system"]))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(top)), 4))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(top))
    colors = plt.get_cmap("tab10")
    for i, s in enumerate(systems):
        g = df[df["system"] == s].set_index("category").reindex(top)
        ax.bar(
            x + (i - (len(systems) - 1) / 2) * width,
            g["mean"],
            width,
            yerr=[g["mean"] - g["lo"], g["hi"] - g["mean"]],
            capsize=2,
            label=s,
            color=colors(i % 10),
        )
    counts = df.drop_duplicates("category").set_index("category")["n"].reindex(top)
    ax.set_xticks(x, [f"{c}\n(n={n})" for c, n in zip(top, counts.fillna(0).astype(int), strict=True)])
    ax.set_ylabel(f"{metric} (95% CI, users resampled)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
