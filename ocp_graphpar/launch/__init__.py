"""Launching fairchem runs with the plugin: ``fairchem`` CLI hooks, SLURM on CPU, preemption.

The ``fairchem`` CLI builds its process groups, and submits SLURM jobs, before any model code
runs, so importing the plugin from a config comes too late for those steps. ``make setup``
therefore installs a one-line start-up hook (``ocp_graphpar-fairchem.pth``) into the virtual
environment; in ``fairchem`` processes only, it calls :func:`install_cli_hooks`, which

- keeps only the datasets the ``--mode`` reads and surveys them before any rank starts
  (:func:`ocp_graphpar.launch.datasets.prepare_datasets`);
- refuses a ``--gp-gpus`` that does not divide ``--num-gpus`` x ``--num-nodes`` with a clear
  message (upstream asserts deep inside ``setup_gp``, or silently lowers it);
- with ``--submit --cpu``, asks SLURM for CPU tasks instead of GPUs;
- submits :class:`GraphParallelRunner`, fairchem's ``Runner`` that imports the plugin in the
  job before process groups exist (gloo on CPU nodes, see ``ocp_graphpar.fairchem_fixes``) and
  turns SLURM's preemption signal into a checkpoint at the next optimizer-step boundary.
"""

from ocp_graphpar.launch.cli_hooks import HOOK_ENV, check_launch, install_cli_hooks, wants_cli_hooks
from ocp_graphpar.launch.preemption import checkpoint_at_step_boundaries
from ocp_graphpar.launch.runner import GraphParallelRunner

__all__ = [
    "HOOK_ENV",
    "GraphParallelRunner",
    "check_launch",
    "checkpoint_at_step_boundaries",
    "install_cli_hooks",
    "wants_cli_hooks",
]
