"""What ``ocp-graphpar relax`` and ``md`` check before any worker starts: the options, the
checkpoint and structure files, and an existing ``--out`` to resume from."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.simulate.trajectory import LastFrame, read_last_frame


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: the structure file's atoms (a fresh run) or the last frame of
    ``--out`` (``resumed``), at ``step``."""

    atoms: Atoms
    out: Path
    resumed: LastFrame | None

    @property
    def step(self) -> int:
        return self.resumed.step if self.resumed else 0


def check_common_options(args: argparse.Namespace) -> None:
    """Refuse option values no run can use."""
    if args.gp < 1:
        raise UserFacingError(f"--gp must be at least 1, got {args.gp}.")
    if args.steps < 1:
        raise UserFacingError(f"--steps must be at least 1, got {args.steps}.")
    if args.interval < 1:
        raise UserFacingError(
            f"--interval must be at least 1 (steps a frame), got {args.interval}."
        )
    if not np.isfinite(args.skin) or args.skin < 0:
        raise UserFacingError(f"--skin must be 0 or more (A), got {args.skin}.")
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise UserFacingError(
            f"--checkpoint {checkpoint} does not exist: pass a fairchem checkpoint "
            "(checkpoint.pt or best_checkpoint.pt of a training run)."
        )


def check_relax_options(args: argparse.Namespace) -> None:
    """Refuse relaxation settings that cannot converge."""
    if not np.isfinite(args.fmax) or args.fmax <= 0:
        raise UserFacingError(f"--fmax must be a positive force (eV/A), got {args.fmax}.")


def check_md_options(args: argparse.Namespace) -> None:
    """Refuse MD settings that have no meaning."""
    if not np.isfinite(args.timestep) or args.timestep <= 0:
        raise UserFacingError(f"--timestep must be positive (fs), got {args.timestep}.")
    if not np.isfinite(args.temperature) or args.temperature < 0:
        raise UserFacingError(f"--temperature must be 0 or more (K), got {args.temperature}.")
    if args.friction is not None:
        if args.ensemble == "nve":
            raise UserFacingError(
                "--friction sets Langevin's thermostat; --ensemble nve has none. Drop one."
            )
        if not np.isfinite(args.friction) or args.friction < 0:
            raise UserFacingError(f"--friction must be 0 or more (1/fs), got {args.friction}.")


def read_structure(path: str | Path) -> Atoms:
    """The last frame of ``path``, any file ``ase.io.read`` reads."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserFacingError(f"--structure {path} does not exist.")
    try:
        atoms = ase.io.read(path, index=-1)
    except Exception as error:  # ASE's readers raise anything for a file of another format
        raise UserFacingError(
            f"cannot read --structure {path} with ase.io.read ({type(error).__name__}: {error}). "
            "Pass a file ASE reads (.traj, .extxyz, .cif, POSCAR, ...); .traj and .extxyz keep "
            "FixAtoms constraints."
        ) from None
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise UserFacingError(f"--structure {path} holds no atoms.")
    return atoms


def out_path(path: str | Path) -> Path:
    """``--out`` as a path, refused unless it names an ASE ``.traj`` file."""
    path = Path(path).expanduser()
    if path.suffix != ".traj":
        raise UserFacingError(f"--out {path} must name an ASE trajectory ending in .traj.")
    if path.is_dir():
        raise UserFacingError(f"--out {path} is a folder: name a .traj file.")
    return path


def start_point(args: argparse.Namespace, *, command: str) -> StartPoint:
    """The structure and ``--out`` checked, and where the run starts."""
    structure = read_structure(args.structure)
    if args.gp > len(structure):
        raise UserFacingError(
            f"--gp {args.gp} is more than the structure's {len(structure)} atoms: every GP rank "
            "needs atoms of its own."
        )
    out = out_path(args.out)
    resumed = read_last_frame(out, command=command, structure=structure)
    return StartPoint(atoms=resumed.atoms if resumed else structure, out=out, resumed=resumed)
