"""Plot helpers shared by the notebooks."""

from mrrec_lib.viz.figures import save_figure, write_png

__all__ = ["save_figure", "write_png"]
