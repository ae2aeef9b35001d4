"""The structures a workload measures: OC20 frames read from files, or slabs built from a recipe."""

from __future__ import annotations

from pathlib import Path

from ocp_graphpar.errors import UserFacingError


def load_batch(systems: list, *, cutoff: float, max_neighbors: int):
    """Collate the listed structures with their radius graph.

    ``path`` is frame 0 of an ASE-readable file, ``path@K`` frame K; a folder ``dir@K`` is
    item K of an LMDB dataset written by ``ocp-graphpar data`` (or any fairchem S2EF LMDB); a
    mapping is the recipe of a built slab (:func:`slab_structure`).
    """
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(
        max_neigh=max_neighbors, radius=cutoff, r_energy=True, r_forces=True, r_edges=True
    )
    return data_list_collater([a2g.convert(structure(s)) for s in systems], otf_graph=False)


def structure(spec: str | dict):
    """The ASE structure a suite's system names."""
    from ase.io import read

    if isinstance(spec, dict):
        return slab_structure(**spec)
    path, _, index = spec.partition("@")
    if not Path(path).exists():
        raise UserFacingError(
            f"benchmark structure {path} does not exist; the default suite reads "
            "../shared/data/oc20_mini (run from the repository root) or edit the suite's systems"
        )
    index = int(index or 0)
    if Path(path).is_dir():
        from fairchem.core.datasets import LmdbDataset

        return _atoms_of(LmdbDataset({"src": path})[index])
    return read(path, index=index)


def _atoms_of(item):
    """The ASE structure of a stored fairchem item (to rebuild its graph at the model's cutoff)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    atoms = Atoms(
        numbers=item.atomic_numbers.long().numpy(),
        positions=item.pos.numpy(),
        cell=item.cell.reshape(3, 3).numpy(),
        pbc=True,
        tags=item.tags.numpy(),
        constraint=FixAtoms(mask=item.fixed.bool().numpy()),
    )
    atoms.calc = SinglePointCalculator(atoms, energy=float(item.energy), forces=item.forces.numpy())
    return atoms


def slab_structure(
    *,
    slab: str,
    size: list[int],
    a: float,
    vacuum: float,
    adsorbate: str,
    height: float = 1.8,
    rattle: float = 0.05,
    seed: int = 0,
):
    """A periodic fcc(111) slab of ``size`` unit cells with one ``adsorbate`` molecule (an ASE
    g2 name, its first atom ``height`` above a fcc hollow site and the rest above that atom),
    every position rattled by ``rattle`` A. Energy and forces are zero (a2g reads them)."""
    import numpy as np
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = fcc111(slab, size=tuple(size), a=a, vacuum=vacuum)
    mol = molecule(adsorbate)
    if len(mol) > 1 and mol.positions[1:, 2].mean() < mol.positions[0, 2]:
        mol.rotate(180, "x")
    add_adsorbate(atoms, mol, height, "fcc", mol_index=0)
    atoms.rattle(stdev=rattle, seed=seed)
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
    return atoms


def describe_system(system: str | dict) -> str:
    """A suite's system as the report names it."""
    if isinstance(system, str):
        return f"`{Path(system).name}`"
    size = "x".join(map(str, system["size"]))
    return (
        f"{system['slab']} fcc(111) slab of {size} cells (a = {system['a']} A, vacuum "
        f"{system['vacuum']} A) with {system['adsorbate']}, rattled by "
        f"{system.get('rattle', 0.05)} A"
    )
