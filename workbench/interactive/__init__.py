"""Interactive tools for the notebooks (the only package importing ipywidgets): one module per widget, the loss
playground's logic, and the real-model notebook's helpers.

    from workbench.interactive import ScoreExplorer, QueryViewer, LossPlayground, TrainPanel, FigureView
"""

from workbench.interactive.figure_view import FigureView, figure_png, loss_param_controls
from workbench.interactive.loss_playground import LossPlayground
from workbench.interactive.playground import CachedBatch, Settings, cache_batch, compare_losses, compare_runs
from workbench.interactive.query_viewer import QueryViewer, query_frame
from workbench.interactive.score_explorer import ScoreExplorer
from workbench.interactive.train_panel import TrainPanel

__all__ = [
    "CachedBatch",
    "FigureView",
    "LossPlayground",
    "QueryViewer",
    "ScoreExplorer",
    "Settings",
    "TrainPanel",
    "cache_batch",
    "compare_losses",
    "compare_runs",
    "figure_png",
    "loss_param_controls",
    "query_frame",
]
