"""An embedded demo dataset: small adsorbate+slab systems labelled with ASE's EMT calculator.

Nothing is downloaded. Each demo system is an fcc(111) or fcc(100) slab of an EMT metal with a
small adsorbate (H, C, N, O, OH, CO, NH, CH) placed on a surface site, its slab slightly rattled,
its bottom layers fixed with ``FixAtoms`` (like OC20's subsurface). Its frames mix what OC20's
S2EF data holds: the BFGS relaxation from the initial structure (thinned to evenly spaced
steps), and non-equilibrium frames around the relaxed structure, from a short Langevin MD run
at a temperature drawn per system and from rattled copies. Those carry forces of order
1 eV/Å, where relaxation frames end near zero: a model must learn forces to beat predicting
none. The frames go through exactly the writer ``from-traj`` uses
(:func:`~ocp_graphpar.tools.data.convert.systems_to_lmdbs`), so the demo dataset has the same
layout and fields as a converted OC20 one, frame 0 being the initial structure and the last
frame the relaxed one (what IS2RS reads).

The split is by system, and the first split seed is taken whose validation systems' metals and
adsorbates all occur in training systems (in other combinations, facets or sites).

System ``i`` depends only on ``(seed, i)``, so a run with more systems extends one with fewer,
and two runs with the same seed on one machine write identical data.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc111
from ase.constraints import FixAtoms
from tqdm import tqdm

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.data.convert import (
    DatasetSummary,
    check_val_fraction,
    covering_split_seed,
    systems_to_lmdbs,
)
from ocp_graphpar.tools.data.emt_frames import (
    DEFAULT_FMAX,
    md_frames,
    rattled_frames,
    relaxation_frames,
)
from ocp_graphpar.tools.data.lmdb_writer import check_output_target
from ocp_graphpar.tools.data.samples import (
    TAG_ADSORBATE,
    TAG_FIXED_SLAB,
    TAG_FREE_SLAB,
    System,
    system_from_frames,
)

#: fcc transition metals ASE's EMT has parameters for (its Al is a rougher fit, left out).
DEMO_METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt")

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
_TEMPERATURES_K = (300.0, 1000.0)  # MD temperature range, drawn per system

DEFAULT_SYSTEMS = 32  # about 770 frames, half a minute on 2 cores
DEFAULT_MAX_STEPS = 100  # BFGS steps per relaxation at most
DEFAULT_RELAXATION_FRAMES = 10  # evenly spaced relaxation steps kept per system, ends included
DEFAULT_MD_FRAMES = 10
DEFAULT_RATTLED_FRAMES = 4


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
    temperature: float  # K of the MD frames

    @property
    def name(self) -> str:
        return f"demo{self.index:04d}_{self.metal}{self.facet}_{self.adsorbate}_{self.site}"


@dataclass(frozen=True)
class FrameCounts:
    """How many frames of each kind a demo system gets."""

    relaxation: int = DEFAULT_RELAXATION_FRAMES
    md: int = DEFAULT_MD_FRAMES
    rattled: int = DEFAULT_RATTLED_FRAMES

    def check(self) -> None:
        if self.relaxation < 2 or self.md < 0 or self.rattled < 0:
            raise UserFacingError(
                "--relaxation-frames must be at least 2 (the initial and the relaxed structure); "
                "--md-frames and --rattled-frames 0 or more."
            )


DEFAULT_FRAMES = FrameCounts()


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
        temperature=float(rng.uniform(*_TEMPERATURES_K)),
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
    """The BFGS relaxation of one demo structure with EMT, every step (initial one included)
    a frame carrying its raw EMT energy and forces."""
    return relaxation_frames(build_demo_atoms(recipe), fmax=fmax, max_steps=max_steps)


def demo_system_frames(
    recipe: DemoRecipe,
    *,
    counts: FrameCounts = DEFAULT_FRAMES,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> list[Atoms]:
    """All frames of one demo system: the initial structure and evenly spaced relaxation steps,
    then the MD and rattled frames, and the relaxed structure last."""
    relaxation = relax_demo_system(recipe, fmax=fmax, max_steps=max_steps)
    kept = np.unique(np.linspace(0, len(relaxation) - 1, counts.relaxation).round().astype(int))
    relaxed = relaxation[-1]
    md_rng, rattle_rng = (np.random.default_rng([recipe.rattle_seed, k]) for k in (1, 2))
    return [
        *(relaxation[i] for i in kept[:-1]),
        *md_frames(relaxed, temperature=recipe.temperature, count=counts.md, rng=md_rng),
        *rattled_frames(relaxed, count=counts.rattled, rng=rattle_rng),
        relaxed,
    ]


def demo_system(
    seed: int,
    index: int,
    *,
    counts: FrameCounts = DEFAULT_FRAMES,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> System:
    """Demo system ``index`` under ``seed``, labelled, as a :class:`System`."""
    recipe = demo_recipe(seed, index)
    frames = demo_system_frames(recipe, counts=counts, fmax=fmax, max_steps=max_steps)
    return system_from_frames(recipe.name, frames, source=f"EMT demo, seed {seed}")


def demo_systems(
    n_systems: int = DEFAULT_SYSTEMS,
    seed: int = 0,
    *,
    counts: FrameCounts = DEFAULT_FRAMES,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
    progress: bool = True,
) -> list[System]:
    """Build and label ``n_systems`` demo systems in memory, in order, one process per core
    (each system depends only on its index, so the result is the same on any core count)."""
    make = partial(demo_system, seed, counts=counts, fmax=fmax, max_steps=max_steps)
    workers = min(
        n_systems, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    )
    bar = {"total": n_systems, "desc": "EMT demo systems", "unit": "system"}
    bar["disable"] = None if progress else True
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [make(index) for index in tqdm(range(n_systems), **bar)]
    # fork: the workers run ASE and numpy only, and need none of the parent's imports redone
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(make, range(n_systems)), **bar))


def demo_split_seed(n_systems: int, seed: int, val_fraction: float) -> int:
    """The first split seed whose validation systems' metals and adsorbates all occur among the
    training systems; ``seed`` itself when no split of so few systems can do that."""
    recipes = [demo_recipe(seed, index) for index in range(n_systems)]
    labels = {r.name: {f"metal {r.metal}", f"adsorbate {r.adsorbate}"} for r in recipes}
    covering = covering_split_seed(labels, val_fraction)
    return seed if covering is None else covering


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
    counts: FrameCounts = DEFAULT_FRAMES,
    progress: bool = True,
) -> DatasetSummary:
    """Make ``systems`` EMT demo systems and write them like ``from-traj`` does (same layout).

    Needs no files or network. Options as :func:`~ocp_graphpar.tools.data.convert.systems_to_lmdbs`.
    """
    started = time.perf_counter()
    check_output_target(out, overwrite)
    check_val_fraction(val_fraction)
    counts.check()
    if systems < 1 or (val_fraction > 0 and systems < 2):
        raise UserFacingError(
            f"--systems must be at least 2 to have train and validation systems (got {systems}); "
            "or pass --val-fraction 0 with --systems 1."
        )
    if max_steps < 0 or fmax <= 0:
        raise UserFacingError("--max-steps must be 0 or more and --fmax positive.")
    made = demo_systems(
        systems, seed, counts=counts, fmax=fmax, max_steps=max_steps, progress=progress
    )
    split_seed = demo_split_seed(systems, seed, val_fraction) if val_fraction > 0 else seed
    summary = systems_to_lmdbs(
        made,
        out,
        val_fraction=val_fraction,
        seed=split_seed,
        linear_reference=linear_reference,
        overwrite=overwrite,
        progress=progress,
        origin="ocp-graphpar data demo",
    )
    summary.seconds = time.perf_counter() - started  # EMT labelling included
    return summary
