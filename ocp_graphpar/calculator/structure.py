"""The structure a calculator call sends its workers, and what it refuses before sending."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

from ocp_graphpar.errors import UserFacingError

#: Periodic lattice vectors spanning less (A, A^2 or A^3) are treated as degenerate.
_MIN_CELL_EXTENT = 1e-6


@dataclass(frozen=True)
class ModelFacts:
    """What the calling process needs to know of the workers' model to check a structure.

    Attributes:
        name: the model's class.
        max_atomic_number: the heaviest element its embedding knows.
        cutoff: its neighbour cutoff (A).
        max_neighbors: its neighbour cap per atom.
        uses_ema: whether the checkpoint's EMA averages were loaded.
    """

    name: str
    max_atomic_number: int
    cutoff: float
    max_neighbors: int
    uses_ema: bool


@dataclass(frozen=True)
class Structure:
    """One structure as plain arrays.

    Attributes:
        numbers: ``(N,)`` atomic numbers.
        positions: ``(N, 3)`` positions (A).
        cell: ``(3, 3)`` lattice vectors as rows.
        pbc: ``(3,)`` periodicity along each vector.
        tags: ``(N,)`` OC20 tags (0 subsurface, 1 surface, 2 adsorbate).
        fixed: ``(N,)`` atoms fixed by a ``FixAtoms`` constraint.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    tags: np.ndarray
    fixed: np.ndarray

    @classmethod
    def from_atoms(cls, atoms: Atoms) -> Structure:
        fixed = np.zeros(len(atoms), dtype=bool)
        for constraint in atoms.constraints:
            if isinstance(constraint, FixAtoms):
                fixed[constraint.get_indices()] = True
        return cls(
            numbers=atoms.get_atomic_numbers(),
            positions=atoms.get_positions(),
            cell=np.asarray(atoms.get_cell()),
            pbc=np.asarray(atoms.pbc, dtype=bool),
            tags=atoms.get_tags(),
            fixed=fixed,
        )

    def to_atoms(self) -> Atoms:
        atoms = Atoms(
            numbers=self.numbers,
            positions=self.positions,
            cell=self.cell,
            pbc=self.pbc,
            tags=self.tags,
        )
        if self.fixed.any():
            atoms.set_constraint(FixAtoms(mask=self.fixed))
        return atoms


def check_structure(structure: Structure, *, model: ModelFacts, gp_size: int) -> None:
    """Raise :class:`UserFacingError` for a structure the model cannot be run on."""
    count = len(structure.numbers)
    if count == 0:
        raise UserFacingError("the structure has no atoms.")
    if gp_size > count:
        raise UserFacingError(
            f"gp_size={gp_size} is larger than the structure's {count} atoms: every GP rank "
            f"needs atoms of its own. Use gp_size <= {count} (graph parallelism pays for "
            "structures of hundreds of atoms and more)."
        )
    if not np.isfinite(structure.positions).all():
        bad = np.flatnonzero(~np.isfinite(structure.positions).all(axis=1))
        raise UserFacingError(
            f"positions of atoms {bad[:5].tolist()} are not finite (NaN or inf); a previous "
            "step may have diverged."
        )
    unknown = sorted({int(z) for z in structure.numbers if not 1 <= z <= model.max_atomic_number})
    if unknown:
        raise UserFacingError(
            f"element(s) with atomic number {unknown} are unknown to this {model.name}, whose "
            f"embedding covers Z = 1 .. {model.max_atomic_number}."
        )
    periodic = structure.cell[structure.pbc]
    # The volume spanned by the periodic lattice vectors (a length, area or volume).
    extent = float(np.sqrt(max(np.linalg.det(periodic @ periodic.T), 0.0))) if len(periodic) else 1
    if extent < _MIN_CELL_EXTENT:
        raise UserFacingError(
            f"the cell is degenerate along its periodic directions (pbc={structure.pbc.tolist()}"
            f", cell={structure.cell.round(3).tolist()}): each periodic direction needs its own "
            "independent lattice vector. Give the structure a cell (e.g. atoms.center(vacuum="
            "10.0, axis=2) for a slab), or set pbc=False along directions without one."
        )
