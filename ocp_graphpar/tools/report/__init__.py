"""Reports on finished runs: learning curves from fairchem's logs, baselines, PNG plots."""

from ocp_graphpar.tools.report.curves import (
    LearningCurves,
    plot_learning_curves,
    read_learning_curves,
)
from ocp_graphpar.tools.report.scores import S2EFScores, score_s2ef_predictions

__all__ = [
    "LearningCurves",
    "S2EFScores",
    "plot_learning_curves",
    "read_learning_curves",
    "score_s2ef_predictions",
]
