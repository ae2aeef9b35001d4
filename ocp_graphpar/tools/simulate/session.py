"""The graph-parallel calculator of one ``relax`` / ``md`` run, and what a run interrupted by
Ctrl-C or stopped by a failed worker says."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

from ocp_graphpar.calculator import GraphParallelCalculator, WorkerError
from ocp_graphpar.tools.simulate.runs import RunSummary
from ocp_graphpar.tools.simulate.trajectory import FrameWriter

#: The exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130
#: The exit status of a run stopped by a failed worker.
WORKER_FAILED = 1


def start_calculator(args: argparse.Namespace) -> AbstractContextManager:
    """The calculator of ``args`` (``--checkpoint``, ``--gp``, ``--cpu``, ``--skin``,
    ``--seed``), its workers started; leaving its ``with`` block stops them."""
    return GraphParallelCalculator(
        checkpoint_path=args.checkpoint,
        gp_size=args.gp,
        cpu=args.cpu,
        skin=args.skin,
        seed=args.seed,
    )


def run_guarded(
    loop: Callable[[], RunSummary], *, writer: FrameWriter, command: str
) -> RunSummary | int:
    """``loop()``'s summary, or the exit status after Ctrl-C or a failed worker, with a note of
    what the trajectory holds and how to go on."""
    try:
        return loop()
    except KeyboardInterrupt:
        status, why = INTERRUPTED, "interrupted"
    except WorkerError as error:
        print(f"ocp-graphpar: error: {error}", file=sys.stderr)
        status, why = WORKER_FAILED, "stopped"
    if writer.last_step is None:
        print(f"\n{command} {why} before its first frame was written.", file=sys.stderr)
    else:
        print(
            f"\n{command} {why}: {writer.path} holds {writer.frames} frames up to step "
            f"{writer.last_step}. Run the same command again to resume from there.",
            file=sys.stderr,
        )
    return status
