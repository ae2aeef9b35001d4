"""Real OC20 structures from ../shared/data/oc20_mini for the tests, as plain tensors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OC20_MINI = SHARED_DATA / "oc20_mini"


def require_oc20_mini() -> Path:
    if not OC20_MINI.is_dir():
        pytest.skip(f"real OC20 data not found at {OC20_MINI} (the shared/ folder beside the repo)")
    return OC20_MINI


@dataclass
class Graph:
    """A batch of periodic structures with a radius graph (edges ``source -> target``).

    ``pos (N, 3)``, ``atomic_numbers (N,)``, ``batch (N,)``, ``cell (B, 3, 3)``,
    ``edge_index (2, E)``, ``cell_offsets (E, 3)`` (integer image shifts of the source),
    ``reverse_edge (E,)``.
    """

    pos: torch.Tensor
    atomic_numbers: torch.Tensor
    batch: torch.Tensor
    cell: torch.Tensor
    edge_index: torch.Tensor
    cell_offsets: torch.Tensor
    reverse_edge: torch.Tensor

    @property
    def num_systems(self) -> int:
        return int(self.cell.shape[0])


@cache
def oc20_atoms(system: str, frame: int = 0):
    from ase.io import read

    return read(require_oc20_mini() / f"{system}.traj", index=frame)


def oc20_systems(count: int, *, max_atoms: int = 120) -> list[str]:
    """The first ``count`` systems of the index with at most ``max_atoms`` atoms."""
    rows = (require_oc20_mini() / "index.tsv").read_text().splitlines()[1:]
    names = [r.split("\t")[0] for r in rows if int(r.split("\t")[1]) <= max_atoms]
    return names[:count]


def graph_from_atoms(atoms_list, cutoff: float) -> Graph:
    """Batch ASE structures and build their periodic radius graphs with ASE's neighbour list."""
    from ase.neighborlist import neighbor_list

    pos, numbers, batch, cells, edges, offsets = [], [], [], [], [], []
    start = 0
    for b, atoms in enumerate(atoms_list):
        i, j, shift = neighbor_list("ijS", atoms, cutoff)
        # ASE's (i, j, S) means j + S is a neighbour of i: the edge runs j -> i.
        edges.append(np.stack([j, i]) + start)
        offsets.append(shift)
        pos.append(atoms.get_positions())
        numbers.append(atoms.get_atomic_numbers())
        batch.append(np.full(len(atoms), b))
        cells.append(np.asarray(atoms.get_cell()))
        start += len(atoms)
    edge_index = torch.as_tensor(np.concatenate(edges, axis=1), dtype=torch.long)
    cell_offsets = torch.as_tensor(np.concatenate(offsets), dtype=torch.float64)
    return Graph(
        pos=torch.as_tensor(np.concatenate(pos), dtype=torch.float64),
        atomic_numbers=torch.as_tensor(np.concatenate(numbers), dtype=torch.long),
        batch=torch.as_tensor(np.concatenate(batch), dtype=torch.long),
        cell=torch.as_tensor(np.stack(cells), dtype=torch.float64),
        edge_index=edge_index,
        cell_offsets=cell_offsets,
        reverse_edge=reverse_edges(edge_index, cell_offsets),
    )


def reverse_edges(edge_index: torch.Tensor, cell_offsets: torch.Tensor) -> torch.Tensor:
    """Id of the reverse of every edge: ``(j -> i, S)`` pairs with ``(i -> j, -S)``."""
    keys = {}
    src, dst = edge_index.tolist()
    shifts = cell_offsets.round().long().tolist()
    for e, (s, d, shift) in enumerate(zip(src, dst, shifts)):
        keys[(s, d, *shift)] = e
    return torch.tensor(
        [keys[(d, s, *(-x for x in shift))] for s, d, shift in zip(src, dst, shifts)],
        dtype=torch.long,
    )


def fairchem_batch(atoms_list, *, dtype=torch.float64, edges: bool = True):
    """A fairchem/PyG batch of ASE structures, with OC20's 6 A / 50-neighbour graph when
    ``edges`` (for ``otf_graph: false``) and positions in ``dtype``. Cells stay float32, as
    fairchem stores them (its on-the-fly graph builder assumes float32 cells)."""
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(max_neigh=50, radius=6, r_energy=True, r_forces=True, r_edges=edges)
    data_list = []
    for index, atoms in enumerate(atoms_list):
        data = a2g.convert(atoms)
        data.sid = index
        data_list.append(data)
    batch = data_list_collater(data_list, otf_graph=not edges)
    batch.pos = batch.pos.to(dtype)
    return batch


def oc20_batch_atoms(count: int, max_atoms: int = 90):
    return [oc20_atoms(s) for s in oc20_systems(count, max_atoms=max_atoms)]
