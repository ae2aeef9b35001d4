"""Launching fairchem runs with the plugin: ``fairchem`` CLI hooks and SLURM jobs on CPU.

The ``fairchem`` CLI builds its process groups, and submits SLURM jobs, before any trainer or
model code runs, so what the plugin changes on that path cannot come from a config. ``make
setup`` therefore installs a one-line start-up hook (``ocp_graphpar-fairchem.pth``) into the
virtual environment; in ``fairchem`` processes only, it calls :func:`install_cli_hooks`, whose
module docstring lists each hook and why (the ``--gp-gpus`` check, dataset surveys before any
rank starts, ``--submit --cpu`` on CPU tasks and gloo through :class:`GraphParallelRunner`).
Importing the plugin changes nothing of fairchem; the fixes of fairchem's training behaviour
(atomic checkpoints, preemption at step boundaries) belong to the trainer the configs select,
``ocp_graphpar.trainers.GraphParallelTrainer``.
"""

from ocp_graphpar.launch.cli_hooks import HOOK_ENV, check_launch, install_cli_hooks, wants_cli_hooks
from ocp_graphpar.launch.runner import GraphParallelRunner

__all__ = [
    "HOOK_ENV",
    "GraphParallelRunner",
    "check_launch",
    "install_cli_hooks",
    "wants_cli_hooks",
]
