"""Training figures: SFT loss, GRPO reward and its parts per step, GRPO learning signal, validation nDCG@100 per step
(paper Fig. 4)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd


def _frame(rows: list[dict[str, Any]], key: str) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty or key not in df:
        return pd.DataFrame(columns=["step", key])
    return df.dropna(subset=[key]).drop_duplicates("step", keep="last").sort_values("step")


def sft_loss_figure(log: list[dict[str, Any]]) -> plt.Figure:
    df = _frame(log, "loss")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(df["step"], df["loss"], marker="o", ms=3)
    ax.set(xlabel="optimizer step", ylabel="loss (assistant tokens)", title="SFT warm-up loss")
    ax.grid(alpha=0.3)
    return fig


def lengths_figure(lengths: list[int], tool_calls: list[int], max_length: int) -> plt.Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    a.hist(lengths, bins=20)
    a.axvline(max_length, color="red", ls="--", label="sft_max_length")
    a.set(xlabel="tokens per conversation", ylabel="conversations", title="SFT data length")
    a.legend()
    counts = pd.Series(tool_calls).value_counts().sort_index()
    b.bar(counts.index.astype(str), counts.values)
    b.set(xlabel="tool calls", ylabel="conversations", title="Tool calls per kept trajectory")
    fig.tight_layout()
    return fig


REWARD_PARTS = {
    "reward": "total",
    "rewards/format_reward/mean": "format (x0.1)",
    "rewards/retrieval_reward/mean": "retrieval (x5)",
    "rewards/memory_reward/mean": "memory (x0.1)",
}


def grpo_curves_figure(steps: list[dict[str, Any]]) -> plt.Figure:
    """Reward and its weighted parts, completion length and tool calls per rollout, per optimizer step."""
    df = pd.DataFrame(steps)
    df = df[df["reward"].notna()] if "reward" in df else df.iloc[0:0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for key, label in REWARD_PARTS.items():
        if key in df:
            axes[0].plot(df["step"], df[key], marker="o", ms=3, label=label)
    axes[0].set(xlabel="step", ylabel="reward", title="Reward per step")
    axes[0].legend(fontsize=8)
    if "completions/mean_length" in df:
        axes[1].plot(df["step"], df["completions/mean_length"], marker="o", ms=3)
    axes[1].set(xlabel="step", ylabel="model tokens", title="Completion length (tool results excluded)")
    if "tools/call_frequency" in df:
        axes[2].plot(df["step"], df["tools/call_frequency"], marker="o", ms=3)
    axes[2].set(xlabel="step", ylabel="calls", title="Tool calls per rollout")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# What decides whether a GRPO step can change the policy, as TRL logs it: (key, panel title, y label).
SIGNAL_PANELS: tuple[tuple[str, str, str], ...] = (
    ("frac_reward_zero_std", "Groups with equal rewards (no gradient)", "share of groups"),
    ("reward_std", "Reward spread within groups", "std"),
    ("entropy", "Policy entropy (model tokens)", "nats"),
    ("grad_norm", "Gradient norm", "norm"),
    ("completions/clipped_ratio", "Completions cut by the budget", "share"),
)


def grpo_signal_figure(steps: list[dict[str, Any]]) -> plt.Figure:
    """Why a GRPO run does or does not move the policy: groups without reward variance give no advantage, low
    entropy leaves few different completions to compare, and truncated completions are malformed by construction."""
    fig, axes = plt.subplots(1, len(SIGNAL_PANELS), figsize=(3.2 * len(SIGNAL_PANELS), 3.2))
    for ax, (key, title, ylabel) in zip(axes, SIGNAL_PANELS, strict=True):
        df = _frame(steps, key)
        ax.plot(df["step"], df[key], marker="o", ms=3)
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def validation_figure(val: list[dict[str, Any]], metric: str = "ndcg@100") -> plt.Figure:
    """Validation metric over training steps (the paper's Fig. 4 form), the best step marked."""
    df = _frame(val, metric)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(df["step"], df[metric], marker="o", label=metric)
    if "recall@100" in df and metric != "recall@100":
        ax2 = ax.twinx()
        ax2.plot(df["step"], df["recall@100"], marker="s", color="tab:orange", alpha=0.7, label="recall@100")
        ax2.set_ylabel("recall@100")
    if not df.empty:
        best = df.loc[df[metric].idxmax()]
        ax.axvline(best["step"], color="gray", ls="--", lw=1)
        ax.annotate("best", (best["step"], best[metric]), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="training step", ylabel=metric, title=f"Validation {metric} during RL")
    ax.grid(alpha=0.3)
    return fig


def rates_figure(table: pd.DataFrame, columns: tuple[str, ...] = ("format_rate", "tool_call_rate")) -> plt.Figure:
    """Grouped bars of rates per policy (rows of `table`, indexed by policy name)."""
    cols = [c for c in columns if c in table]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    table[cols].plot.bar(ax=ax, rot=0)
    ax.set(ylim=(0, 1.05), ylabel="share of validation queries", title="Format and tool use")
    ax.grid(alpha=0.3, axis="y")
    return fig
