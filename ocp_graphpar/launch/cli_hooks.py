"""Hooks into the ``fairchem`` console script: the plugin's only changes to fairchem's code.

The CLI checks its flags, reads the datasets' settings, submits SLURM jobs and builds process
groups before any trainer exists, so these steps cannot be reached from the trainer the config
names. :func:`install_cli_hooks` installs the hooks below into ``fairchem.core._cli``, and only
there; it is called by the start-up ``.pth`` file (:mod:`ocp_graphpar.launch.startup_hook`) in
``fairchem`` processes (or with ``OCP_GRAPHPAR_CLI_HOOKS=1``), never by ``import ocp_graphpar``.

- ``_cli.main`` is wrapped to refuse, before any rank starts, a ``--gp-gpus`` that does not
  divide ``--num-gpus`` x ``--num-nodes`` (upstream asserts deep inside ``setup_gp``, or quietly
  lowers it), or whose GP groups would span nodes (:func:`check_launch`); to give each rank of a local ``--cpu`` run its share of the
  cores (:func:`share_cores_among_ranks`); with ``--submit --cpu``, to ask SLURM for CPU tasks
  instead of ``--num-gpus`` GPUs per node (:func:`cpu_executor`, in ``_cli.AutoExecutor`` for
  that call); and to print a :class:`UserFacingError` as one line (exit status 2).
- ``_cli.build_config`` is wrapped to keep only the datasets the ``--mode`` reads and survey them
  (:func:`ocp_graphpar.launch.datasets.prepare_datasets`): bad data stops the launch early.
- ``_cli.Runner`` (what ``--submit`` pickles for the job, and what a one-rank local run calls)
  is :class:`~ocp_graphpar.launch.runner.GraphParallelRunner`: in a ``--submit --cpu`` job it
  joins the tasks as gloo ranks from SLURM's layout (upstream's ``distutils.setup`` would
  initialise NCCL on one fixed port), and a requeued job runs it again.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.launch.placement import check_placement
from ocp_graphpar.parallel import check_gp_size

#: Set to 1 to install the hooks in a process that is not the ``fairchem`` script.
HOOK_ENV = "OCP_GRAPHPAR_CLI_HOOKS"
_INSTALLED = "_ocp_graphpar_hooked"


def wants_cli_hooks(argv: Sequence[str]) -> bool:
    """Whether this interpreter runs the ``fairchem`` CLI (or is asked to via ``HOOK_ENV``)."""
    script = os.path.basename(argv[0]) if argv else ""
    return script == "fairchem" or os.environ.get(HOOK_ENV) == "1"


def check_launch(args: argparse.Namespace) -> None:
    """Refuse launch flags that cannot work, before any rank starts."""
    if args.gp_gpus is None:
        return
    world_size = args.num_gpus * args.num_nodes
    if args.gp_gpus > world_size:
        raise UserFacingError(
            f"--gp-gpus {args.gp_gpus} is more than the {world_size} ranks of this run "
            f"(--num-gpus {args.num_gpus} x --num-nodes {args.num_nodes}); fairchem would "
            f"quietly use {world_size}. Ask for at least {args.gp_gpus} ranks."
        )
    check_gp_size(world_size, args.gp_gpus)
    check_placement(num_nodes=args.num_nodes, tasks_per_node=args.num_gpus, gp_size=args.gp_gpus)


def share_cores_among_ranks(args: argparse.Namespace) -> None:
    """Give each rank of a local ``--cpu`` run its share of the cores (``OMP_NUM_THREADS``,
    inherited by the spawned ranks), unless the user set it. torch would otherwise size every
    rank's thread pool to all the cores: with 2 ranks on 2 cores, four busy threads, and a
    demo training step 4x slower (1.2 s against 0.31 s)."""
    if not args.cpu or args.submit or args.num_gpus < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // args.num_gpus))


def install_cli_hooks() -> None:
    """Wrap ``fairchem.core._cli.main`` and swap in the plugin's runner (idempotent)."""
    from fairchem.core import _cli

    if getattr(_cli.main, _INSTALLED, False):
        return
    from ocp_graphpar.launch.datasets import prepare_datasets
    from ocp_graphpar.launch.runner import GraphParallelRunner

    upstream_main = _cli.main
    upstream_executor = _cli.AutoExecutor
    upstream_build_config = _cli.build_config

    @functools.wraps(upstream_build_config)
    def build_config(*args, **kwargs) -> dict:
        return prepare_datasets(upstream_build_config(*args, **kwargs))

    @functools.wraps(upstream_main)
    def main(args=None, override_args=None):
        if args is None:
            from fairchem.core.common.flags import flags

            args, override_args = flags.get_parser().parse_known_args()
        _cli.AutoExecutor = cpu_executor(upstream_executor) if args.cpu else upstream_executor
        try:
            check_launch(args)
            share_cores_among_ranks(args)
            return upstream_main(args, override_args)
        except UserFacingError as error:
            print(f"fairchem: error: {error}", file=sys.stderr)
            sys.exit(2)

    setattr(main, _INSTALLED, True)
    _cli.main = main
    _cli.build_config = build_config
    _cli.Runner = GraphParallelRunner


def cpu_executor(executor_cls: type) -> type:
    """``executor_cls`` that does not ask SLURM for GPUs: upstream's ``--submit`` requests
    ``--num-gpus`` GPUs per node, which a CPU partition refuses."""

    class CpuExecutor(executor_cls):
        def update_parameters(self, **kwargs) -> None:
            kwargs.pop("gpus_per_node", None)
            super().update_parameters(**kwargs)

    return CpuExecutor
