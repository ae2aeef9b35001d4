"""Reports on finished runs: learning curves from fairchem's logs, baselines, PNG plots."""

from ocp_graphpar.tools.report.curves import (
    LearningCurves,
    plot_learning_curves,
    read_learning_curves,
    zero_force_mae,
)

__all__ = ["LearningCurves", "plot_learning_curves", "read_learning_curves", "zero_force_mae"]
