"""Graph-parallel inference for ASE: :class:`GraphParallelCalculator` runs one structure's graph
over several worker processes (and GPUs), for relaxations and molecular dynamics of structures
too large for one GPU."""

from ocp_graphpar.calculator.calculator import GraphParallelCalculator, WorkerError

__all__ = ["GraphParallelCalculator", "WorkerError"]
