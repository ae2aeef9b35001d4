"""``ocp-graphpar demo``: the main job (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ocp_graphpar.tools.demo.options import DemoOptions

_DEFAULTS = DemoOptions(out=Path("demo_run"))


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM and SIGHUP (a closed terminal, ``kill``) like Ctrl-C, so the same cleanup
    runs: fairchem's processes are stopped and the resume hint is printed."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """:class:`DemoOptions` from parsed arguments."""
    return DemoOptions(
        out=Path(args.out),
        data=tuple(Path(p) for p in args.data or ()),
        restart=args.restart,
        systems=args.systems,
        emt_steps=args.emt_steps,
        md_frames=args.md_frames,
        rattled_frames=args.rattled_frames,
        val_fraction=args.val_fraction,
        frame_stride=args.frame_stride,
        max_atoms=args.max_atoms or None,
        steps=args.steps,
        evaluations=args.evaluations,
        relaxation_steps=args.relaxation_steps,
    )


def run_demo_command(args: argparse.Namespace) -> int:
    """Handler of ``demo``: 0 done, 130 interrupted (resumable), 1 a stage failed."""
    from ocp_graphpar.tools.demo.pipeline import run_demo

    options = options_from_args(args)
    with terminate_as_interrupt():
        try:
            run_demo(options)
        except KeyboardInterrupt:
            return 130
        except subprocess.CalledProcessError:
            return 1
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _option(group, flag: str, default: int | None, metavar: str, text: str) -> None:
    """A positive integer option; its default is shown in the help when it has one."""
    shown = "" if default is None else " (default: %(default)s)"
    group.add_argument(flag, type=_positive, default=default, metavar=metavar, help=text + shown)


def add_demo_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to a top-level sub-command group."""
    demo = subparsers.add_parser(
        "demo",
        help="the main job: data, graph-parallel training, predictions, relaxations, "
        "leaderboard files, summary (resumable)",
        description="Build a dataset (the embedded EMT demo, or --data trajectories), train "
        "GemNet-XL at demo width with fairchem on 2 CPU ranks in one graph-parallel group, "
        "predict S2EF, run IS2RS relaxations, write validated leaderboard files, measure one "
        "graph-parallel training step, and summarise in OUT/summary.md. Re-running resumes: "
        "finished stages are skipped and training continues from its last checkpoint.",
    )
    demo.add_argument(
        "--out", default="demo_run", metavar="DIR", help="demo folder (default: %(default)s)"
    )
    demo.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="ASE trajectory files or folders of *.traj (one relaxation each, with energies and "
        "forces) instead of the embedded demo set",
    )
    demo.add_argument(
        "--restart", action="store_true", help="delete what an earlier demo left in DIR first"
    )
    data = demo.add_argument_group("data")
    _option(data, "--systems", _DEFAULTS.systems, "N", "embedded set: EMT systems")
    _option(data, "--emt-steps", _DEFAULTS.emt_steps, "S", "embedded set: BFGS steps at most")
    _option(data, "--md-frames", _DEFAULTS.md_frames, "K", "embedded set: MD frames per system")
    _option(
        data,
        "--rattled-frames",
        _DEFAULTS.rattled_frames,
        "K",
        "embedded set: rattled frames per system",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=_DEFAULTS.val_fraction,
        metavar="F",
        help="fraction of systems held out for validation; at least 4 are (default: %(default)s)",
    )
    _option(
        data,
        "--frame-stride",
        None,
        "K",
        "--data: keep every K-th frame (default: the smallest K that keeps an epoch within --steps)",
    )
    data.add_argument(
        "--max-atoms",
        type=int,
        default=_DEFAULTS.max_atoms,
        metavar="A",
        help="--data: leave out systems with more atoms; 0 keeps all (default: %(default)s)",
    )
    run = demo.add_argument_group("training and relaxations")
    _option(run, "--steps", _DEFAULTS.steps, "N", "optimizer steps, rounded to whole epochs")
    _option(run, "--evaluations", _DEFAULTS.evaluations, "E", "validations during training, about")
    _option(
        run, "--relaxation-steps", _DEFAULTS.relaxation_steps, "N", "LBFGS steps per relaxation"
    )
    demo.set_defaults(handler=run_demo_command)
