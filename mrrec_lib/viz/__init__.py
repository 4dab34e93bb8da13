"""Plot helpers shared by the notebooks."""

from mrrec_lib.viz.figures import save_figure

__all__ = ["save_figure"]
