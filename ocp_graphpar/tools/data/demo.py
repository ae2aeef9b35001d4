"""An embedded demo dataset: small adsorbate+slab relaxations with ASE's EMT calculator.

Nothing is downloaded. Each demo system is an fcc(111) or fcc(100) slab of an EMT metal with a
small adsorbate (H, C, N, O, OH, CO, NH, CH) placed on a surface site, its slab slightly rattled,
its bottom layers fixed with ``FixAtoms`` (like OC20's subsurface), relaxed with BFGS. Every
relaxation step is one frame, and the frames go through exactly the writer ``from-traj`` uses
(:func:`~ocp_graphpar.tools.data.convert.systems_to_lmdbs`), so the demo dataset has the same
layout and fields as a converted OC20 one.

System ``i`` depends only on ``(seed, i)``, so a run with more systems extends one with fewer,
and two runs with the same seed on one machine write identical data.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.optimize import BFGS
from tqdm import tqdm

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.data.convert import (
    DatasetSummary,
    check_val_fraction,
    systems_to_lmdbs,
)
from ocp_graphpar.tools.data.lmdb_writer import check_output_target
from ocp_graphpar.tools.data.samples import (
    TAG_ADSORBATE,
    TAG_FIXED_SLAB,
    TAG_FREE_SLAB,
    System,
    system_from_frames,
)

#: Metals ASE's EMT has parameters for.
DEMO_METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")

#: Adsorbates as (symbol, height above the binding atom in Å); the binding atom comes first.
DEMO_ADSORBATES: dict[str, tuple[tuple[str, float], ...]] = {
    "H": (("H", 0.0),),
    "C": (("C", 0.0),),
    "N": (("N", 0.0),),
    "O": (("O", 0.0),),
    "OH": (("O", 0.0), ("H", 0.97)),
    "CO": (("C", 0.0), ("O", 1.15)),
    "NH": (("N", 0.0), ("H", 1.02)),
    "CH": (("C", 0.0), ("H", 1.09)),
}

_FACETS = {
    "111": (fcc111, ("ontop", "bridge", "fcc", "hcp")),
    "100": (fcc100, ("ontop", "bridge", "hollow")),
}
_SIZES = ((2, 2, 4), (3, 3, 3), (3, 3, 4))  # (x, y, layers): 17 to 38 atoms with the adsorbate
_FREE_LAYERS = 2  # top layers left free; the rest are fixed, as OC20's subsurface
_VACUUM = 9.0  # Å on each side of the slab
DEFAULT_SYSTEMS = 16  # about 650 frames, a few seconds on 2 cores
DEFAULT_FMAX = 0.05  # eV/Å
DEFAULT_MAX_STEPS = 100


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that defines one demo system; drawn from ``(seed, index)``."""

    index: int
    metal: str
    facet: str
    size: tuple[int, int, int]
    adsorbate: str
    site: str
    height: float  # Å of the binding atom above the site
    offset: tuple[float, float]  # Å lateral shift off the ideal site, so relaxations differ
    rattle_seed: int

    @property
    def name(self) -> str:
        return f"demo{self.index:04d}_{self.metal}{self.facet}_{self.adsorbate}_{self.site}"


def demo_recipe(seed: int, index: int) -> DemoRecipe:
    """The recipe for demo system ``index`` under ``seed``; independent of other systems."""
    rng = np.random.default_rng([seed, index])
    facet = str(rng.choice(sorted(_FACETS)))
    sites = _FACETS[facet][1]
    return DemoRecipe(
        index=index,
        metal=str(rng.choice(DEMO_METALS)),
        facet=facet,
        size=_SIZES[int(rng.integers(len(_SIZES)))],
        adsorbate=str(rng.choice(sorted(DEMO_ADSORBATES))),
        site=str(rng.choice(sites)),
        height=float(rng.uniform(1.4, 2.2)),
        offset=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))),
        rattle_seed=int(rng.integers(2**31)),
    )


def build_demo_atoms(recipe: DemoRecipe) -> Atoms:
    """The unrelaxed structure: slab first, adsorbate last, OC20 tags, bottom layers fixed."""
    builder = _FACETS[recipe.facet][0]
    slab = builder(recipe.metal, size=recipe.size, vacuum=_VACUUM)
    layer = slab.get_tags()  # ase.build numbers layers 1 (top) .. n (bottom)
    fixed = layer > _FREE_LAYERS
    # Rattling every slab atom gives the fixed ones nonzero raw forces too, as in DFT data.
    slab.rattle(stdev=0.05, seed=recipe.rattle_seed)
    adsorbate = Atoms(
        [symbol for symbol, _ in DEMO_ADSORBATES[recipe.adsorbate]],
        positions=[(0.0, 0.0, dz) for _, dz in DEMO_ADSORBATES[recipe.adsorbate]],
    )
    add_adsorbate(slab, adsorbate, recipe.height, position=recipe.site, offset=None)
    slab.positions[-len(adsorbate) :, :2] += recipe.offset
    n_slab = len(slab) - len(adsorbate)
    tags = np.full(len(slab), TAG_ADSORBATE)
    tags[:n_slab] = np.where(fixed, TAG_FIXED_SLAB, TAG_FREE_SLAB)
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(fixed)))
    slab.pbc = True  # periodic in z as well, like OC20's DFT cells (the vacuum separates images)
    return slab


def relax_demo_system(
    recipe: DemoRecipe, fmax: float = DEFAULT_FMAX, max_steps: int = DEFAULT_MAX_STEPS
) -> list[Atoms]:
    """Relax one demo structure with EMT + BFGS; every step (initial one included) is a frame.

    Frames carry a SinglePointCalculator with the raw EMT energy and forces.
    """
    atoms = build_demo_atoms(recipe)
    atoms.calc = EMT()
    frames: list[Atoms] = []

    def record() -> None:
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(
            frame,
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(apply_constraint=False),
        )
        frames.append(frame)

    optimizer = BFGS(atoms, logfile=None)
    optimizer.attach(record)  # ASE calls observers before the first step and after each
    optimizer.run(fmax=fmax, steps=max_steps)
    return frames


def relax_demo_systems(
    n_systems: int = DEFAULT_SYSTEMS,
    seed: int = 0,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
    progress: bool = True,
) -> list[System]:
    """Build and relax ``n_systems`` demo systems in memory, as :class:`System` objects."""
    systems = []
    for index in tqdm(
        range(n_systems), desc="relaxing (EMT)", unit="system", disable=None if progress else True
    ):
        recipe = demo_recipe(seed, index)
        frames = relax_demo_system(recipe, fmax=fmax, max_steps=max_steps)
        systems.append(system_from_frames(recipe.name, frames, source=f"EMT demo, seed {seed}"))
    return systems


def make_demo_dataset(
    out: str | os.PathLike,
    *,
    systems: int = DEFAULT_SYSTEMS,
    seed: int = 0,
    val_fraction: float = 0.2,
    linear_reference: bool = False,
    overwrite: bool = False,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
    progress: bool = True,
) -> DatasetSummary:
    """Relax ``systems`` EMT demo systems and write them like ``from-traj`` does (same layout).

    Needs no files or network. Options as :func:`~ocp_graphpar.tools.data.convert.systems_to_lmdbs`.
    """
    started = time.perf_counter()
    check_output_target(out, overwrite)
    check_val_fraction(val_fraction)
    if systems < 1 or (val_fraction > 0 and systems < 2):
        raise UserFacingError(
            f"--systems must be at least 2 to have train and validation systems (got {systems}); "
            "or pass --val-fraction 0 with --systems 1."
        )
    if max_steps < 0 or fmax <= 0:
        raise UserFacingError("--max-steps must be 0 or more and --fmax positive.")
    relaxed = relax_demo_systems(systems, seed, fmax=fmax, max_steps=max_steps, progress=progress)
    summary = systems_to_lmdbs(
        relaxed,
        out,
        val_fraction=val_fraction,
        seed=seed,
        linear_reference=linear_reference,
        overwrite=overwrite,
        progress=progress,
        origin="ocp-graphpar data demo",
    )
    summary.seconds = time.perf_counter() - started  # relaxations included
    return summary
