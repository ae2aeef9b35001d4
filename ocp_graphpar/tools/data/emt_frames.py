"""Frames labelled with ASE's EMT calculator: a relaxation, Langevin MD, rattled copies.

Every frame is a copy of the structure carrying a ``SinglePointCalculator`` with its raw EMT
energy and forces (constraints not applied, as DFT codes store them), the form
:func:`~ocp_graphpar.tools.data.samples.system_from_frames` reads.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.optimize import BFGS

DEFAULT_FMAX = 0.05  # eV/Å
RATTLE_STDEV = (0.05, 0.15)  # Å, range of a rattled frame's displacement per coordinate
MD_TIMESTEP = 2.0 * units.fs  # H is the lightest atom
MD_FRICTION = 0.02 / units.fs
MD_BURN_IN = 10  # MD steps before the first frame
MD_STRIDE = 5  # MD steps between frames (10 fs)


def labelled(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` carrying its raw energy and forces from ``atoms.calc``."""
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(
        frame,
        energy=atoms.get_potential_energy(),
        forces=atoms.get_forces(apply_constraint=False),
    )
    return frame


def relaxation_frames(atoms: Atoms, *, fmax: float = DEFAULT_FMAX, max_steps: int) -> list[Atoms]:
    """Relax ``atoms`` (a copy) with EMT + BFGS; every step, the initial one included, a frame."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    frames: list[Atoms] = []
    optimizer = BFGS(atoms, logfile=None)
    optimizer.attach(lambda: frames.append(labelled(atoms)))  # before the first step and after each
    optimizer.run(fmax=fmax, steps=max_steps)
    return frames


def md_frames(
    start: Atoms, *, temperature: float, count: int, rng: np.random.Generator
) -> list[Atoms]:
    """``count`` frames of Langevin MD at ``temperature`` K from ``start`` (its constraints
    hold), one every ``MD_STRIDE`` steps after a burn-in of ``MD_BURN_IN``."""
    if count == 0:
        return []
    atoms = start.copy()
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(
        atoms, MD_TIMESTEP, temperature_K=temperature, friction=MD_FRICTION, rng=rng
    )
    dynamics.run(MD_BURN_IN)
    frames = []
    for _ in range(count):
        frames.append(labelled(atoms))
        dynamics.run(MD_STRIDE)
    return frames


def rattled_frames(start: Atoms, *, count: int, rng: np.random.Generator) -> list[Atoms]:
    """``count`` copies of ``start`` with its unconstrained atoms displaced at random, each by
    a Gaussian of a standard deviation drawn from ``RATTLE_STDEV``."""
    free = np.ones(len(start), dtype=bool)
    for constraint in start.constraints:
        free[constraint.get_indices()] = False
    frames = []
    for _ in range(count):
        atoms = start.copy()
        atoms.positions[free] += rng.normal(scale=rng.uniform(*RATTLE_STDEV), size=(free.sum(), 3))
        atoms.calc = EMT()
        frames.append(labelled(atoms))
    return frames
