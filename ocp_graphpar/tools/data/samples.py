"""One relaxation as arrays (:class:`System`), OC20 tags, and the ``Data`` samples built from it.

A :class:`System` is what every input becomes before writing: the frames of one ASE trajectory
(or one demo relaxation) checked and stacked into numpy arrays. The functions at the bottom turn
a system into the torch_geometric ``Data`` objects that fairchem's ``LmdbDataset`` returns; the
field list is documented in :mod:`ocp_graphpar.tools.data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms
from torch_geometric.data import Data

from ocp_graphpar.errors import UserFacingError

#: OC20 tag values.
TAG_FIXED_SLAB, TAG_FREE_SLAB, TAG_ADSORBATE = 0, 1, 2

#: Elements an OC20 adsorbate is made of (H, C, N, O).
ADSORBATE_ELEMENTS = frozenset({1, 6, 7, 8})


@dataclass
class System:
    """The frames of one relaxation (one adsorbate+slab system) as float64 numpy arrays.

    Shapes: ``n`` atoms, ``F`` frames. Frame 0 is the initial structure, frame ``F-1`` the
    relaxed one. ``fixed`` and ``tags`` come from frame 0 (constraints and tags do not change
    during a relaxation).
    """

    name: str
    source: str
    numbers: np.ndarray  # (n,) int64 atomic numbers
    fixed: np.ndarray  # (n,) bool, True where a FixAtoms constraint holds the atom
    tags: np.ndarray  # (n,) int64 OC20 tags
    tags_from_file: bool  # False when the tags were derived by derive_oc20_tags
    positions: np.ndarray  # (F, n, 3) Å
    cells: np.ndarray  # (F, 3, 3) Å
    energies: np.ndarray  # (F,) eV, as given by the input
    forces: np.ndarray  # (F, n, 3) eV/Å, raw (constraints not applied)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.energies.shape[0])


def select_frames(system: System, keep: Sequence[int]) -> System:
    """``system`` restricted to the frames ``keep`` (in the given order)."""
    keep = list(keep)
    return replace(
        system,
        positions=system.positions[keep],
        cells=system.cells[keep],
        energies=system.energies[keep],
        forces=system.forces[keep],
    )


def thin_frames(system: System, stride: int) -> System:
    """Every ``stride``-th frame of a relaxation, with the first and the last (relaxed) frame
    always kept: consecutive relaxation steps are nearly identical, so thinning trades little
    information for proportionally shorter epochs, and IS2RS still gets both endpoints."""
    if stride < 1:
        raise UserFacingError(f"a frame stride must be 1 or more, got {stride}.")
    last = system.n_frames - 1
    return select_frames(system, sorted(set(range(0, system.n_frames, stride)) | {last}))


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """(n,) bool: atoms held by a ``FixAtoms`` constraint (other constraint types are ignored)."""
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.get_indices()] = True
    return mask


def derive_oc20_tags(numbers: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """OC20 tags for a structure stored without them: (n,) int64 in {0, 1, 2}.

    OC20 writes the slab first and the adsorbate last, and fixes only slab atoms. So the
    adsorbate is the trailing contiguous run of free H/C/N/O atoms (tag 2); fixed atoms are
    subsurface slab (tag 0); everything else is free surface slab (tag 1). A slab whose last
    atoms are free H/C/N/O (e.g. an oxide ending in surface O) would be mislabelled: store tags
    in the file in that case and they are kept.
    """
    numbers = np.asarray(numbers)
    fixed = np.asarray(fixed, dtype=bool)
    tags = np.where(fixed, TAG_FIXED_SLAB, TAG_FREE_SLAB).astype(np.int64)
    start = len(numbers)
    while start > 0 and not fixed[start - 1] and int(numbers[start - 1]) in ADSORBATE_ELEMENTS:
        start -= 1
    tags[start:] = TAG_ADSORBATE
    return tags


def _frame_energy_forces(atoms: Atoms, index: int, source: str) -> tuple[float, np.ndarray]:
    """Energy (eV) and raw forces (n, 3) of one frame; UserFacingError if either is missing."""
    where = f"frame {index} of {source}"
    if atoms.calc is None:
        raise UserFacingError(
            f"{where} has no energy or forces (no calculator results stored). "
            "from-traj needs the DFT energy and forces of every frame: write the trajectory "
            "with the calculator's results attached (ase.io.Trajectory writes them when "
            "atoms.calc holds results), or drop frames without them."
        )
    try:
        energy = float(atoms.get_potential_energy())
    except Exception as error:  # ASE raises several types for a missing property
        raise UserFacingError(
            f"{where} has no energy ({type(error).__name__}: {error}). Store the potential "
            "energy of every frame in the file, or drop frames without it."
        ) from error
    try:
        # Raw forces: the stored DFT forces, not zeroed on fixed atoms, as OC20 LMDBs hold them.
        forces = np.asarray(atoms.get_forces(apply_constraint=False), dtype=np.float64)
    except Exception as error:
        raise UserFacingError(
            f"{where} has no forces ({type(error).__name__}: {error}). Store the forces of "
            "every frame in the file, or drop frames without them."
        ) from error
    if (
        forces.shape != (len(atoms), 3)
        or not np.all(np.isfinite(forces))
        or not np.isfinite(energy)
    ):
        raise UserFacingError(
            f"{where} has non-finite or mis-shaped energy/forces (forces shape {forces.shape} "
            f"for {len(atoms)} atoms). Fix or drop that frame."
        )
    return energy, forces


def system_from_frames(name: str, frames: Sequence[Atoms], source: str = "") -> System:
    """Check the frames of one relaxation and stack them into a :class:`System`.

    Every frame must hold the same atoms in the same order and carry an energy and forces
    (energies as ``get_potential_energy()``, forces as ``get_forces(apply_constraint=False)``,
    i.e. the raw stored forces). Tags are kept when frame 0 has any nonzero tag, otherwise
    derived with :func:`derive_oc20_tags`.
    """
    source = source or name
    if len(frames) == 0:
        raise UserFacingError(
            f"{source} contains no frames. Pass a trajectory with at least one structure, "
            "or leave the file out."
        )
    first = frames[0]
    numbers = np.asarray(first.get_atomic_numbers(), dtype=np.int64)
    if numbers.size == 0:
        raise UserFacingError(f"frame 0 of {source} has no atoms. Leave the file out.")
    energies, forces, positions, cells = [], [], [], []
    for index, atoms in enumerate(frames):
        if not np.array_equal(atoms.get_atomic_numbers(), numbers):
            raise UserFacingError(
                f"frame {index} of {source} holds different atoms than frame 0 "
                f"({atoms.get_chemical_formula()} vs {first.get_chemical_formula()}). "
                "One file must hold one relaxation of one system; split the file."
            )
        energy, frame_forces = _frame_energy_forces(atoms, index, source)
        energies.append(energy)
        forces.append(frame_forces)
        positions.append(atoms.get_positions())
        cells.append(atoms.cell.complete())
    fixed = fixed_mask(first)
    file_tags = np.asarray(first.get_tags(), dtype=np.int64)
    tags_from_file = bool(np.any(file_tags != 0))
    tags = file_tags if tags_from_file else derive_oc20_tags(numbers, fixed)
    return System(
        name=name,
        source=source,
        numbers=numbers,
        fixed=fixed,
        tags=tags,
        tags_from_file=tags_from_file,
        positions=np.stack(positions).astype(np.float64),
        cells=np.stack(cells).astype(np.float64),
        energies=np.asarray(energies, dtype=np.float64),
        forces=np.stack(forces),
    )


def _structure_fields(system: System, frame: int, sid: int) -> dict:
    """Fields shared by S2EF and IS2RS samples, float32 like upstream OC20 LMDBs."""
    return {
        "atomic_numbers": torch.from_numpy(system.numbers.astype(np.float32)),
        "pos": torch.from_numpy(system.positions[frame].astype(np.float32)),
        "cell": torch.from_numpy(system.cells[frame].astype(np.float32)).view(1, 3, 3),
        "natoms": system.n_atoms,
        "tags": torch.from_numpy(system.tags.astype(np.int64)),
        "fixed": torch.from_numpy(system.fixed.astype(np.float32)),
        "forces": torch.from_numpy(system.forces[frame].astype(np.float32)),
        "sid": int(sid),
        "system": system.name,
    }


def s2ef_sample(system: System, frame: int, sid: int, energy_offset: float = 0.0) -> Data:
    """One S2EF sample: frame ``frame`` of ``system``, energy minus ``energy_offset`` (eV)."""
    energy = float(system.energies[frame] - energy_offset)
    return Data(**_structure_fields(system, frame, sid), energy=energy, y=energy, fid=int(frame))


def is2rs_sample(system: System, sid: int, energy_offset: float = 0.0) -> Data:
    """One IS2RS/IS2RE sample: frame 0 with the last frame's positions and energy as targets."""
    initial = float(system.energies[0] - energy_offset)
    relaxed = float(system.energies[-1] - energy_offset)
    return Data(
        **_structure_fields(system, 0, sid),
        energy=initial,
        y=initial,
        y_init=initial,
        pos_relaxed=torch.from_numpy(system.positions[-1].astype(np.float32)),
        y_relaxed=relaxed,
        energy_relaxed=relaxed,
    )
