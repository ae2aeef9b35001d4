"""ASE trajectories unlike the embedded demo set, for checking that the demo's recipe carries
over to data a user brings (``make demo DATA=...``).

Each file is one system on an fcc(110) slab (a facet the embedded set lacks): Langevin MD at
800 K from the unrelaxed structure, then a BFGS relaxation from the last MD frame, every step a
frame, with raw EMT energies and forces and no tags (the data tools derive them).

Systems cycle through ``pairs`` metal-adsorbate pairs on different sites, so a held-out system's
pair occurs in training on another site (its chemistry is covered, as the embedded set's is). On
pairs never seen in training a small model cannot know the adsorbate's forces: measured on 16
systems of 16 distinct pairs, the slab atoms' forces are learned (0.16 eV/Å against 0.54 for
zero forces in MD frames) and the adsorbate's are not (0.69 against 0.76).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, fcc110
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import Trajectory
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.optimize import BFGS

from ocp_graphpar.tools.data.emt_frames import labelled

METALS = ("Cu", "Pd", "Pt", "Ag")
ADSORBATES = {
    "H": [("H", 0.0)],
    "O": [("O", 0.0)],
    "C": [("C", 0.0)],
    "OH": [("O", 0.0), ("H", 0.97)],
}
SITES = ("ontop", "longbridge", "shortbridge", "hollow")
TEMPERATURE_K = 800.0


def md_then_relaxation(
    index: int, *, pairs: int = 8, md_steps: int = 60, relax_steps: int = 60
) -> list[Atoms]:
    """The frames of system ``index``: ``md_steps`` MD steps, then at most ``relax_steps``."""
    rng = np.random.default_rng([11, index])
    pair = index % pairs
    metal = METALS[pair % len(METALS)]
    adsorbate = list(ADSORBATES)[(pair + pair // len(METALS)) % len(ADSORBATES)]
    slab = fcc110(metal, size=(2, 3, 4), vacuum=8.0)
    fixed = slab.get_tags() > 2
    add_adsorbate(
        slab,
        Atoms(
            [s for s, _ in ADSORBATES[adsorbate]], [(0, 0, dz) for _, dz in ADSORBATES[adsorbate]]
        ),
        float(rng.uniform(1.5, 2.0)),
        position=SITES[(index + index // pairs) % len(SITES)],
    )
    slab.set_tags(np.zeros(len(slab), dtype=int))  # no tags: the data tools derive them
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(fixed)))
    slab.pbc = True
    slab.calc = EMT()
    frames: list[Atoms] = []

    def record() -> None:
        frames.append(labelled(slab))

    MaxwellBoltzmannDistribution(slab, temperature_K=TEMPERATURE_K, rng=rng)
    md = Langevin(
        slab, 2 * units.fs, temperature_K=TEMPERATURE_K, friction=0.02 / units.fs, rng=rng
    )
    md.attach(record)
    md.run(md_steps - 1)
    slab.set_momenta(np.zeros((len(slab), 3)))
    optimizer = BFGS(slab, logfile=None)
    optimizer.attach(record)
    optimizer.run(fmax=0.05, steps=relax_steps)
    return frames


def write_trajectories(out: Path, systems: int, **options: int) -> list[Path]:
    """``systems`` trajectory files ``out/emt110_NN.traj``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(systems):
        path = out / f"emt110_{index:02d}.traj"
        with Trajectory(str(path), "w") as trajectory:
            for frame in md_then_relaxation(index, **options):
                trajectory.write(frame)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import sys

    for written in write_trajectories(
        Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 16
    ):
        print(written)
