"""``ocp-graphpar relax`` and ``ocp-graphpar md``: a structure relaxed, or run in molecular
dynamics, with a checkpoint's model over graph-parallel workers, to a trajectory that a rerun
resumes."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.simulate import inputs, session
from ocp_graphpar.tools.simulate.inputs import StartPoint
from ocp_graphpar.tools.simulate.runs import (
    ENSEMBLES,
    OPTIMIZERS,
    MDSettings,
    RelaxSettings,
    RunSummary,
    initial_velocities,
    molecular_dynamics,
    relax,
    settings_record,
)
from ocp_graphpar.tools.simulate.trajectory import FrameWriter

_DEFAULT_FRICTION = 0.01  # 1/fs
_RESUME_NOTE = (
    "If --out exists (written by an earlier run of this command on the same structure), the run "
    "resumes from its last frame and runs only the steps that remain. "
)


def run_relax(args: argparse.Namespace) -> int:
    """Handler of ``relax``."""
    inputs.check_common_options(args)
    inputs.check_relax_options(args)
    start = inputs.start_point(args, command="relax")
    settings = RelaxSettings(fmax=args.fmax, optimizer=args.optimizer, steps=args.steps)
    if start.resumed:
        record = start.resumed.record
        if record.get("converged") and record.get("fmax", np.inf) < settings.fmax:
            print(
                f"{start.out} is already converged at step {start.step} (fmax "
                f"{record['fmax']:.4f} < {settings.fmax} eV/A): nothing to do."
            )
            return 0
        if start.step >= settings.steps:
            print(
                f"{start.out} already holds {start.step} steps (fmax {record.get('fmax', np.nan):.4f}"
                f" eV/A): pass --steps above {start.step} to go on."
            )
            return 0
    writer = _writer(start, "relax", settings_record(settings), args.interval)

    def loop() -> RunSummary:
        with session.start_calculator(args) as calculator:
            start.atoms.calc = calculator
            return relax(start.atoms, settings=settings, writer=writer, start_step=start.step)

    return _run(loop, start=start, writer=writer, command="relax", settings=settings)


def run_md(args: argparse.Namespace) -> int:
    """Handler of ``md``."""
    inputs.check_common_options(args)
    inputs.check_md_options(args)
    start = inputs.start_point(args, command="md")
    settings = MDSettings(
        temperature_k=args.temperature,
        timestep_fs=args.timestep,
        ensemble=args.ensemble,
        friction=_DEFAULT_FRICTION if args.friction is None else args.friction,
        steps=args.steps,
    )
    if start.step >= settings.steps:
        print(
            f"{start.out} already holds {start.step} steps: pass --steps above {start.step} "
            "to go on."
        )
        return 0
    rng = np.random.default_rng(args.seed)
    if start.resumed:
        try:
            rng.bit_generator.state = start.resumed.record["rng"]
        except (KeyError, TypeError, ValueError):
            raise UserFacingError(
                f"the last frame of --out {start.out} holds no random generator state: "
                "choose another --out, or delete it to start afresh."
            ) from None
    else:
        initial_velocities(start.atoms, temperature_k=settings.temperature_k, rng=rng)
    writer = _writer(start, "md", settings_record(settings), args.interval)

    def loop() -> RunSummary:
        with session.start_calculator(args) as calculator:
            start.atoms.calc = calculator
            return molecular_dynamics(
                start.atoms, settings=settings, writer=writer, rng=rng, start_step=start.step
            )

    return _run(loop, start=start, writer=writer, command="md", settings=settings)


def _writer(start: StartPoint, command: str, settings: dict[str, Any], interval: int):
    resumed = start.resumed
    if resumed:
        print(f"resuming from {start.out}: {resumed.frames} frames, last at step {resumed.step}")
        before = resumed.record.get("settings") or {}
        for key, value in settings.items():
            if key in before and before[key] != value:
                print(f"  note: the earlier run had {key}={before[key]}; going on with {value}")
    return FrameWriter(
        start.out,
        command=command,
        interval=interval,
        frames=resumed.frames if resumed else 0,
        last_step=resumed.step if resumed else None,
        settings=settings,
    )


def _run(loop, *, start: StartPoint, writer: FrameWriter, command: str, settings) -> int:
    began = time.perf_counter()
    summary = session.run_guarded(loop, writer=writer, command=command)
    if isinstance(summary, int):
        return summary
    startup = time.perf_counter() - began - summary.seconds
    if isinstance(settings, RelaxSettings):
        print(_relax_outcome(summary, settings))
    else:
        print(_md_outcome(summary, settings))
    print(
        f"  {summary.steps_run} steps run now (steps {summary.first_step} -> "
        f"{summary.last_step}): {summary.seconds_per_step:.3f} s/step after {startup:.1f} s "
        f"start-up; trajectory {writer.path} ({writer.frames} frames)"
    )
    return 0


def _relax_outcome(summary: RunSummary, settings: RelaxSettings) -> str:
    if summary.converged:
        head = f"relax: converged at step {summary.last_step}"
    else:
        head = (
            f"relax: not converged after {summary.last_step} steps (rerun with a larger "
            "--steps to go on)"
        )
    return (
        f"{head}\n  final energy {summary.energy:.6f} eV, fmax {summary.fmax:.4f} eV/A "
        f"(target {settings.fmax})"
    )


def _md_outcome(summary: RunSummary, settings: MDSettings) -> str:
    if settings.ensemble == "nve":
        how = "NVE (velocity Verlet)"
    else:
        how = f"Langevin NVT at {settings.temperature_k:g} K"
    lines = [
        f"md: {how}, timestep {settings.timestep_fs:g} fs, {summary.last_step} steps done",
        f"  final energy {summary.energy:.6f} eV, mean temperature "
        f"{np.mean(summary.temperatures):.1f} K over the steps run now",
    ]
    if settings.ensemble == "nve":
        drift = summary.total_energies[-1] - summary.total_energies[0]
        lines[-1] += f", total energy drift {drift:+.2e} eV"
    return "\n".join(lines)


def _add_common_options(parser: argparse.ArgumentParser, *, steps_default: int | None) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="fairchem checkpoint")
    parser.add_argument(
        "--structure",
        required=True,
        metavar="PATH",
        help="starting structure: any file ase.io.read reads (its last frame)",
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="trajectory to write (.traj), or to resume"
    )
    parser.add_argument(
        "--gp", type=int, default=1, metavar="N", help="graph-parallel ranks (default: 1)"
    )
    parser.add_argument("--cpu", action="store_true", help="run the ranks on CPU (gloo)")
    steps_help = "steps in all, counted from step 0 of --out"
    parser.add_argument(
        "--steps",
        type=int,
        required=steps_default is None,
        default=steps_default,
        metavar="N",
        help=steps_help + ("" if steps_default is None else " (default: %(default)s)"),
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=1,
        metavar="K",
        help="write a frame every K steps, and the last (default: %(default)s)",
    )
    parser.add_argument(
        "--skin",
        type=float,
        default=1.0,
        metavar="A",
        help="neighbour-list skin in A; 0 searches every step (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial velocities, Langevin's random forces and the workers "
        "(default: %(default)s)",
    )


def add_simulate_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``relax`` and ``md`` to a top-level sub-command group."""
    relax_parser = subparsers.add_parser(
        "relax",
        help="relax a structure with a checkpoint's model",
        description="Relax a structure with a fairchem checkpoint's model over --gp graph-parallel "
        "ranks, keeping its FixAtoms constraints, to an ASE trajectory written atomically "
        "(frame 0 is the starting structure). " + _RESUME_NOTE + "The optimizer restarts on "
        "resume (BFGS's Hessian estimate is not kept).",
    )
    _add_common_options(relax_parser, steps_default=500)
    relax_parser.add_argument(
        "--fmax",
        type=float,
        default=0.05,
        metavar="F",
        help="stop once every free atom's force is below F eV/A (default: %(default)s)",
    )
    relax_parser.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="BFGS",
        help="ASE optimizer (default: %(default)s)",
    )
    relax_parser.set_defaults(handler=run_relax)

    md_parser = subparsers.add_parser(
        "md",
        help="molecular dynamics with a checkpoint's model",
        description="Molecular dynamics with a fairchem checkpoint's model over --gp "
        "graph-parallel ranks, from Maxwell-Boltzmann velocities at --temperature (drawn with "
        "--seed), to an ASE trajectory written atomically (frame 0 is the start). "
        + _RESUME_NOTE
        + "Each frame stores the random generator's state, so a resumed run, Langevin included, "
        "continues as an uninterrupted one would.",
    )
    _add_common_options(md_parser, steps_default=None)
    md_parser.add_argument(
        "--temperature",
        type=float,
        required=True,
        metavar="K",
        help="temperature (K) of the initial velocities and of the Langevin thermostat",
    )
    md_parser.add_argument(
        "--timestep", type=float, required=True, metavar="FS", help="time step (fs)"
    )
    md_parser.add_argument(
        "--ensemble",
        choices=ENSEMBLES,
        default="langevin",
        help="langevin: NVT (Langevin thermostat); nve: velocity Verlet (default: %(default)s)",
    )
    md_parser.add_argument(
        "--friction",
        type=float,
        metavar="G",
        help=f"Langevin friction in 1/fs (default: {_DEFAULT_FRICTION})",
    )
    md_parser.set_defaults(handler=run_md)
