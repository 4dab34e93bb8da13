"""Saving figures: every figure goes to the run folder as PNG and is shown inline."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt

from mrrec_lib.runs import RunPaths


def save_figure(fig: plt.Figure, paths: RunPaths, name: str, show: bool = True) -> Path:
    """Write `figures/<name>.png` atomically, then display it (inline in Jupyter)."""
    out = paths.figures / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, out)
    if show:
        try:
            from IPython.display import display

            display(fig)
        except ImportError:
            pass
    plt.close(fig)
    return out
