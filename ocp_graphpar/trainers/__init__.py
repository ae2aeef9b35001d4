"""fairchem trainers extended through fairchem's trainer registry."""

from ocp_graphpar.trainers.graph_parallel import GraphParallelTrainer

__all__ = ["GraphParallelTrainer"]
