"""``ocp-graphpar data ...``: the ``from-traj`` and ``demo`` sub-commands."""

from __future__ import annotations

import argparse

from ocp_graphpar.tools.data.convert import trajectories_to_lmdbs
from ocp_graphpar.tools.data.demo import (
    DEFAULT_FRAMES,
    DEFAULT_MAX_STEPS,
    DEFAULT_SYSTEMS,
    FrameCounts,
    make_demo_dataset,
)


def _add_common_options(parser: argparse.ArgumentParser, seed_help: str) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="fraction of systems (not frames) for validation, 0 <= F < 1 (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default: %(default)s)")
    parser.add_argument(
        "--linear-reference",
        action="store_true",
        help="fit per-element energies on the training frames, save them as "
        "DIR/linear_reference.json/.npz and store referenced energies",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it holds a dataset (replaced only once the new one is complete)",
    )


def run_from_traj(args: argparse.Namespace) -> int:
    """Handler of ``data from-traj``."""
    summary = trajectories_to_lmdbs(
        args.files,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        linear_reference=args.linear_reference,
        overwrite=args.overwrite,
    )
    print(summary.format())
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``data demo``."""
    summary = make_demo_dataset(
        args.out,
        systems=args.systems,
        seed=args.seed,
        val_fraction=args.val_fraction,
        linear_reference=args.linear_reference,
        overwrite=args.overwrite,
        max_steps=args.max_steps,
        counts=FrameCounts(
            relaxation=args.relaxation_frames, md=args.md_frames, rattled=args.rattled_frames
        ),
    )
    print(summary.format())
    return 0


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data from-traj`` and ``data demo`` to a top-level sub-command group."""
    data = subparsers.add_parser(
        "data",
        help="build LMDB datasets for fairchem",
        description="Build LMDB datasets (S2EF train/val, IS2RS val) that fairchem-core 1.x reads.",
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    from_traj = commands.add_parser(
        "from-traj",
        help="ASE trajectories (one relaxation per file) to LMDBs",
        description="Convert ASE trajectories with energies and forces (one relaxation per file, "
        "e.g. OC20 DFT relaxations) into DIR/s2ef/{train,val} and DIR/is2rs/val, split by system. "
        "OC20 tags are derived when the files store none.",
    )
    from_traj.add_argument(
        "files", nargs="+", metavar="FILE", help="trajectory files, or folders of *.traj files"
    )
    _add_common_options(from_traj, seed_help="seed of the train/val split")
    from_traj.set_defaults(handler=run_from_traj)

    demo = commands.add_parser(
        "demo",
        help="make a small demo dataset with ASE's EMT (no downloads)",
        description="Small adsorbates on fcc(111)/(100) EMT metal slabs: BFGS relaxation frames, "
        "Langevin MD frames and rattled frames around the relaxed structure, written in the same "
        "layout as from-traj. Deterministic for a seed.",
    )
    demo.add_argument(
        "--systems",
        type=int,
        default=DEFAULT_SYSTEMS,
        metavar="N",
        help="number of systems (default: %(default)s, about 770 frames)",
    )
    demo.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        metavar="S",
        help="BFGS step cap per relaxation (default: %(default)s)",
    )
    for name, default, what in (
        ("--relaxation-frames", DEFAULT_FRAMES.relaxation, "evenly spaced relaxation steps"),
        ("--md-frames", DEFAULT_FRAMES.md, "Langevin MD frames around the relaxed structure"),
        ("--rattled-frames", DEFAULT_FRAMES.rattled, "rattled copies of the relaxed structure"),
    ):
        demo.add_argument(
            name,
            type=int,
            default=default,
            metavar="K",
            help=f"{what} per system (default: %(default)s)",
        )
    _add_common_options(demo, seed_help="seed of the structures and of the train/val split")
    demo.set_defaults(handler=run_demo)
