"""The loops of ``ocp-graphpar relax`` and ``md``: an ASE optimizer or integrator stepped over any
ASE calculator, a progress bar, and a frame written at each interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE, LBFGS
from tqdm import tqdm

from ocp_graphpar.tools.simulate.trajectory import FrameWriter

OPTIMIZERS = {"BFGS": BFGS, "LBFGS": LBFGS, "FIRE": FIRE}
ENSEMBLES = ("langevin", "nve")


@dataclass(frozen=True)
class RelaxSettings:
    """A relaxation: ``optimizer`` until every free atom's force is below ``fmax`` (eV/A), for at
    most ``steps`` steps in all (a resumed run counts the steps already on disk)."""

    fmax: float
    optimizer: str
    steps: int


@dataclass(frozen=True)
class MDSettings:
    """Molecular dynamics of ``steps`` steps in all of ``timestep_fs`` femtoseconds: Langevin NVT
    at ``temperature_k`` with ``friction`` (1/fs), or NVE velocity Verlet (``ensemble="nve"``)
    starting from Maxwell-Boltzmann velocities at ``temperature_k``."""

    temperature_k: float
    timestep_fs: float
    ensemble: str
    friction: float
    steps: int


@dataclass
class RunSummary:
    """What one invocation did: steps ``first_step`` to ``last_step``, the final energy (eV), the
    free atoms' largest force (eV/A), temperatures (K) after each step, and the seconds the
    steps took (model calls and writes)."""

    first_step: int
    last_step: int = 0
    energy: float = float("nan")
    fmax: float = float("nan")
    converged: bool = False
    seconds: float = 0.0
    temperatures: list[float] = field(default_factory=list)
    total_energies: list[float] = field(default_factory=list)

    @property
    def steps_run(self) -> int:
        return self.last_step - self.first_step

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps_run if self.steps_run else float("nan")


def largest_force(atoms: Atoms) -> float:
    """The largest force on a free atom (eV/A), what ASE's optimizers compare with ``fmax``."""
    return float(np.sqrt((atoms.get_forces() ** 2).sum(axis=1).max()))


def settings_record(settings: RelaxSettings | MDSettings) -> dict[str, Any]:
    """The settings a frame records (its step count is the run's, not the settings')."""
    return {k: v for k, v in asdict(settings).items() if k != "steps"}


def relax(
    atoms: Atoms,
    *,
    settings: RelaxSettings,
    writer: FrameWriter,
    start_step: int = 0,
    progress: bool = True,
) -> RunSummary:
    """Relax ``atoms`` (its calculator attached) from ``start_step`` to convergence or
    ``settings.steps``. A resumed relaxation starts a fresh optimizer (BFGS's Hessian estimate
    is not kept)."""
    optimizer = OPTIMIZERS[settings.optimizer](atoms, logfile=None)
    summary = RunSummary(first_step=start_step, last_step=start_step)
    started = None
    with _bar("relax", settings.steps, start_step, progress) as bar:
        steps = optimizer.irun(fmax=settings.fmax, steps=settings.steps - start_step)
        for taken, converged in enumerate(steps):
            if started is None:  # the first yield is the starting point's forces
                started = time.perf_counter()
            step = start_step + taken
            summary.energy = atoms.get_potential_energy()
            summary.fmax = largest_force(atoms)
            summary.converged = bool(converged)
            final = converged or step >= settings.steps
            if writer.due(step, final=final):
                writer.write(atoms, step=step, fmax=summary.fmax, converged=summary.converged)
            summary.last_step = step
            bar.set_postfix_str(
                f"energy={summary.energy:.4f} eV, fmax={summary.fmax:.4f} eV/A", refresh=False
            )
            bar.update(step - bar.n)
    summary.seconds = time.perf_counter() - (started or time.perf_counter())
    return summary


def initial_velocities(atoms: Atoms, *, temperature_k: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_k`` (fixed atoms keep none)."""
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)


def integrator(
    atoms: Atoms, *, settings: MDSettings, rng: np.random.Generator
) -> MolecularDynamics:
    """ASE's integrator of ``settings``; Langevin draws its random forces from ``rng``."""
    timestep = settings.timestep_fs * units.fs
    if settings.ensemble == "nve":
        return VelocityVerlet(atoms, timestep=timestep, logfile=None)
    return Langevin(
        atoms,
        timestep=timestep,
        temperature_K=settings.temperature_k,
        friction=settings.friction / units.fs,
        rng=rng,
        communicator=None,
        logfile=None,
    )


def molecular_dynamics(
    atoms: Atoms,
    *,
    settings: MDSettings,
    writer: FrameWriter,
    rng: np.random.Generator,
    start_step: int = 0,
    progress: bool = True,
) -> RunSummary:
    """Run ``atoms`` (calculator and momenta set) from ``start_step`` to ``settings.steps``.
    Each frame records ``rng``'s state, so a run resumed from it draws what an uninterrupted
    run would have drawn."""
    dynamics = integrator(atoms, settings=settings, rng=rng)
    summary = RunSummary(first_step=start_step, last_step=start_step)

    def record(step: int) -> None:
        summary.energy = atoms.get_potential_energy()
        summary.last_step = step
        if writer.due(step, final=step == settings.steps):
            writer.write(atoms, step=step, rng=rng.bit_generator.state)

    with _bar("md", settings.steps, start_step, progress) as bar:
        record(start_step)  # a fresh run's step 0; a resumed run's forces computed again
        started = time.perf_counter()
        for step in range(start_step + 1, settings.steps + 1):
            dynamics.step()
            record(step)
            temperature = atoms.get_temperature()
            summary.temperatures.append(temperature)
            summary.total_energies.append(summary.energy + atoms.get_kinetic_energy())
            bar.set_postfix_str(
                f"energy={summary.energy:.4f} eV, T={temperature:.1f} K", refresh=False
            )
            bar.update(1)
        summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def _bar(command: str, total: int, initial: int, enabled: bool) -> Iterator[tqdm]:
    bar = tqdm(
        total=total,
        initial=initial,
        desc=command,
        unit="step",
        dynamic_ncols=True,
        disable=not enabled,
    )
    try:
        yield bar
    finally:
        bar.close()
