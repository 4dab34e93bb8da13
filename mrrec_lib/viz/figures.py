"""Saving figures: every figure goes to the run folder as PNG and is shown inline."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt

from mrrec_lib.runs import RunPaths


def write_png(fig: plt.Figure, out: Path) -> Path:
    """Write `fig` to `out` atomically (a reader never sees half a PNG) and close it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, out)
    plt.close(fig)
    return out


def save_figure(fig: plt.Figure, paths: RunPaths, name: str, show: bool = True) -> Path:
    """Write `figures/<name>.png` atomically and display it (inline in Jupyter)."""
    if show:
        try:
            from IPython.display import display

            display(fig)
        except ImportError:
            pass
    return write_png(fig, paths.figures / f"{name}.png")
