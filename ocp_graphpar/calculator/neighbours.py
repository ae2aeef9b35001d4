"""A neighbour list that outlives a step: pairs within ``cutoff + skin``, filtered each call.

In molecular dynamics and relaxations atoms move little per step, so the pairs within the
cutoff at one step are among the pairs within ``cutoff + skin`` at an earlier one, as long as
no atom has moved more than ``skin / 2`` since. :class:`SkinNeighbourList` keeps that wider list
(fairchem's ``radius_graph_pbc`` at ``cutoff + skin``, every neighbour kept) and at each call
selects from it exactly what a fresh ``radius_graph_pbc`` at the cutoff would give: the same
distance test, the same ``max_neighbors`` selection (fairchem's ``get_max_neighbors_mask``), in
the same order (the wider search enumerates a superset of the same atom pairs and cell images,
in the same order). The atoms' owners in the GP partition are kept with it, so each call
rebuilds only the edge-dependent part of the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fairchem.core.common.utils import get_max_neighbors_mask, radius_graph_pbc
from torch import Tensor

from ocp_graphpar.parallel import WorkWeights
from ocp_graphpar.parallel.balance import atom_work, balanced_spatial_owner

#: fairchem's radius_graph_pbc drops pairs closer than this (an atom and its own image).
_SAME_ATOM_SQUARED = 0.0001
_EVERY_NEIGHBOUR = 1 << 30


@dataclass(frozen=True)
class _WideList:
    """Pairs within ``cutoff + skin`` of the positions ``pos`` they were searched from."""

    pos: Tensor  # (N, 3)
    cell: Tensor  # (1, 3, 3)
    pbc: Tensor  # (1, 3)
    numbers: Tensor  # (N,)
    edge_index: Tensor  # (2, E') [neighbour, centre], centres non-decreasing
    cell_offsets: Tensor  # (E', 3) integer images of the neighbour
    atom_owner: Tensor | None  # (N,) GP rank of each atom, or None at P = 1


class SkinNeighbourList:
    """Neighbours of one structure's atoms, searched again only when needed.

    Args:
        cutoff, max_neighbors, enforce_max_neighbors_strictly: the model's graph settings.
        skin: extra search distance (A); the list is searched again once an atom has moved
            more than ``skin / 2`` since the last search, or the cell, the periodicity or the
            atoms changed.
        gp_size: ranks of the GP group (atom owners are kept when it is above one).
        weights: the model's work estimate for balancing the ranks.
    """

    def __init__(
        self,
        *,
        cutoff: float,
        max_neighbors: int,
        enforce_max_neighbors_strictly: bool,
        skin: float,
        gp_size: int = 1,
        weights: WorkWeights | None = None,
    ) -> None:
        if skin <= 0:
            raise ValueError(f"skin must be positive, got {skin}")
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        self.enforce_strictly = enforce_max_neighbors_strictly
        self.skin = skin
        self.gp_size = gp_size
        self.weights = weights
        self.searches = 0
        self._wide: _WideList | None = None

    def attach(self, batch) -> None:
        """Give ``batch`` (one structure) the graph a fresh search would give: ``edge_index
        (2, E)``, ``cell_offsets (E, 3)`` and ``neighbors (1,)``, plus ``gp_atom_owner (N,)``
        under graph parallelism."""
        shifts = self._lattice_shifts(batch)
        if shifts is None:
            self._wide = self._search(batch)
            shifts = torch.zeros_like(batch.pos, dtype=self._wide.cell_offsets.dtype)
        wide = self._wide
        edge_index, cell_offsets, neighbors = self._select(batch, wide, shifts)
        batch.edge_index = edge_index
        batch.cell_offsets = cell_offsets
        batch.neighbors = neighbors
        if wide.atom_owner is not None:
            batch.gp_atom_owner = wide.atom_owner

    def _lattice_shifts(self, batch) -> Tensor | None:
        """``(N, 3)`` lattice vectors each atom was wrapped by since the last search (fairchem
        wraps positions into the cell), or ``None`` when the list must be searched again."""
        wide = self._wide
        if wide is None or not (
            wide.numbers.shape == batch.atomic_numbers.shape
            and torch.equal(wide.numbers, batch.atomic_numbers)
            and torch.equal(wide.cell, batch.cell)
            and torch.equal(wide.pbc, torch.atleast_2d(batch.pbc))
        ):
            return None
        delta = (batch.pos.detach() - wide.pos).double()
        shifts = torch.zeros_like(delta)
        periodic = wide.pbc[0]
        if periodic.any():
            cell = wide.cell[0].double()
            fractional = delta @ torch.linalg.inv(cell)
            shifts = torch.where(periodic, fractional.round(), shifts)
            delta = delta - shifts @ cell
        if delta.norm(dim=-1).max() > self.skin / 2:
            return None
        return shifts.to(wide.cell_offsets.dtype)

    def _search(self, batch) -> _WideList:
        self.searches += 1
        edge_index, cell_offsets, _ = radius_graph_pbc(
            batch, self.cutoff + self.skin, _EVERY_NEIGHBOUR
        )
        owner = None
        if self.gp_size > 1:
            # Owners balanced on the wider graph: any owners give the model's exact result,
            # these keep the ranks' work even while atoms move within the skin.
            work = atom_work(edge_index, batch.pos.shape[0], weights=self.weights)
            owner = balanced_spatial_owner(
                batch.batch, batch.pos, batch.cell, edge_index, work, self.gp_size
            )
        return _WideList(
            pos=batch.pos.detach().clone(),
            cell=batch.cell.clone(),
            pbc=torch.atleast_2d(batch.pbc).clone(),
            numbers=batch.atomic_numbers.clone(),
            edge_index=edge_index,
            cell_offsets=cell_offsets,
            atom_owner=owner,
        )

    def _select(self, batch, wide: _WideList, shifts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The pairs within the cutoff now, under fairchem's neighbour cap. An atom wrapped by
        a lattice vector since the search keeps its pairs, their images shifted to match: the
        order of a pair's images, and so of the edges, is unchanged."""
        neighbour, centre = wide.edge_index
        images = wide.cell_offsets + shifts[centre] - shifts[neighbour]
        pos = batch.pos.detach()
        offsets = images.to(pos.dtype) @ batch.cell[0]
        squared = ((pos[centre] - (pos[neighbour] + offsets)) ** 2).sum(dim=-1)
        within = (squared <= self.cutoff * self.cutoff) & (squared > _SAME_ATOM_SQUARED)
        centre, squared = centre[within], squared[within]
        capped, neighbors = get_max_neighbors_mask(
            natoms=batch.natoms,
            index=centre,
            atom_distance=squared,
            max_num_neighbors_threshold=self.max_neighbors,
            enforce_max_strictly=self.enforce_strictly,
        )
        keep = within.nonzero().flatten()[capped]
        return wide.edge_index[:, keep], images[keep], neighbors
