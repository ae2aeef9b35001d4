"""The partition plan: which GP rank owns which atoms and edges of a batch, and its halos.

A rank owns the edges whose target atom it owns ("owner computes"), and with them every
GemNet triplet ``b -> a <- c``, which shares the target ``a``. Two halos carry what crosses the
cut: the source atoms of owned edges that a peer owns, and the reverse edge of each owned edge
when a peer owns it; models that need more (DimeNet++'s input edges) build further halos with
:meth:`PartitionPlan.edge_halo`.

Local numbering: a rank's owned atoms (edges) are its rows ``0 .. n - 1`` in ascending global
order; received halo rows follow them, grouped by source rank, ascending within a rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cached_property

import torch
from torch import Tensor
from torch_scatter import scatter

from ocp_graphpar.parallel.collectives import gather_replicated, reduce_partial
from ocp_graphpar.parallel.halo import Halo, build_halo, empty_halo
from ocp_graphpar.parallel.indexing import RankMajor, rank_major, slots


@dataclass(frozen=True)
class PartitionStats:
    """Per-rank counts (lists of length P) and the totals that decide a partition's quality."""

    atoms: list[int]
    edges: list[int]
    triplets: list[int]
    load: list[float]
    atom_halo: list[int]
    reverse_halo: list[int]
    cut_edges: int

    @property
    def load_imbalance(self) -> float:
        """max / mean estimated work over the ranks (1.0 is perfect balance)."""
        mean = sum(self.load) / len(self.load)
        return max(self.load) / mean if mean > 0 else 1.0


@dataclass(frozen=True)
class PartitionPlan:
    """One batch split over the ranks of a GP group; every field is identical on every rank
    except the ``rank``-specific index maps.

    Attributes:
        rank, size: this rank and the GP group size P.
        num_systems: systems in the batch (B).
        atom_owner: ``(N,)`` owning rank of every atom.
        edge_owner: ``(E,)`` owning rank of every edge (the owner of its target atom).
        atoms: ``(n_atoms,)`` global ids of the owned atoms.
        atom_system: ``(n_atoms,)`` system of each owned atom.
        edges: ``(n_edges,)`` global ids of the owned edges (target atom owned).
        edge_src: ``(n_edges,)`` source atom of each owned edge, as a row of
            ``cat([owned atoms, atom_halo rows])``.
        edge_dst: ``(n_edges,)`` target atom of each owned edge, as an owned-atom row.
        edge_reverse: ``(n_edges,)`` reverse edge of each owned edge, as a row of
            ``cat([owned edges, reverse_halo rows])``; ``None`` without reverse edges.
        atom_halo, reverse_halo: the two exchanges (``reverse_halo`` may be ``None``).
        atom_gather_index: ``(N,)`` row of each global atom in the rank-major concatenation
            of every rank's owned atoms (what :meth:`gather_atoms` receives).
        atom_counts: atoms owned by each rank, ``(P,)`` (the gather's split sizes).
        measure: computes :attr:`stats` when they are first read (reading them costs host
            syncs that the training step does not need).
    """

    rank: int
    size: int
    num_systems: int
    atom_owner: Tensor
    edge_owner: Tensor
    atoms: Tensor
    atom_system: Tensor
    edges: Tensor
    edge_src: Tensor
    edge_dst: Tensor
    edge_reverse: Tensor | None
    atom_halo: Halo
    reverse_halo: Halo | None
    atom_gather_index: Tensor
    atom_counts: list[int]
    measure: Callable[[], PartitionStats] = field(repr=False, compare=False)

    @cached_property
    def stats(self) -> PartitionStats:
        """Partition quality figures (computed once, on first read)."""
        return self.measure()

    @property
    def edge_rows(self) -> Tensor:
        """``(E,)`` row of every edge among its owner's owned edges."""
        return self._edge_major.local

    @property
    def edge_gather_index(self) -> Tensor:
        """``(E,)`` row of every edge in the rank-major concatenation of every rank's owned
        edges (what ``gather_rows`` of per-edge rows returns)."""
        return self._edge_major.position

    @cached_property
    def _edge_major(self) -> RankMajor:
        # Only tools read the whole edge numbering; a step needs this rank's own rows alone,
        # so the plan does not sort every edge up front.
        return rank_major(self.edge_owner, size=self.size)

    def to(self, device: torch.device) -> PartitionPlan:
        """The plan with its index tensors on ``device`` (the stats stay where they were built)."""
        if self.atoms.device == device:
            return self
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, Halo)):
                moved[f.name] = value.to(device)
        return replace(self, **moved)

    @property
    def num_atoms(self) -> int:
        return int(self.atoms.numel())

    @property
    def num_edges(self) -> int:
        return int(self.edges.numel())

    def owned_atom_rows(self, atom_rows: Tensor) -> Tensor:
        """The owned atoms' rows ``(n_atoms, *F)`` of a whole-batch ``(N, *F)`` tensor."""
        return atom_rows if self.size == 1 else atom_rows[self.atoms]

    def owned_edge_rows(self, edge_rows: Tensor) -> Tensor:
        """The owned edges' rows ``(n_edges, *F)`` of a whole-batch ``(E, *F)`` tensor."""
        return edge_rows if self.size == 1 else edge_rows[self.edges]

    def with_halo(self, owned_atoms: Tensor) -> Tensor:
        """Owned per-atom rows ``(n_atoms, *F)`` followed by the halo atoms' rows from their
        owners; ``edge_src`` and ``edge_dst`` index the result."""
        return self.atom_halo.extend(owned_atoms)

    def source_rows(self, owned_atoms: Tensor) -> Tensor:
        """Per-edge source-atom rows ``(n_edges, *F)`` from owned per-atom rows ``(n_atoms, *F)``."""
        return self.with_halo(owned_atoms)[self.edge_src]

    def reverse_rows(self, owned_edges: Tensor) -> Tensor:
        """Per-edge rows of each owned edge's reverse edge, ``(n_edges, *F)``."""
        if self.reverse_halo is None or self.edge_reverse is None:
            raise ValueError("the plan was built without reverse edges")
        return self.reverse_halo.extend(owned_edges)[self.edge_reverse]

    def edge_halo(self, requester: Tensor | None, edge: Tensor | None) -> tuple[Halo, Tensor]:
        """A halo of edges other ranks own, for models whose work needs more than the reverse
        edge (e.g. DimeNet++'s input edges ``k -> j`` of triplets ``k -> j -> i``).

        Args:
            requester, edge: ``(M,)`` pairs (rank that needs the edge, global edge id), the same
                on every rank; duplicates and pairs a rank owns itself are dropped.
        Returns:
            The halo, and ``(E,)`` the row of every global edge in ``cat([owned edges,
            received edges])`` (-1 where this rank holds neither). In a group of one rank,
            every edge is owned and the pairs may be ``None``.
        """
        if self.size == 1:
            return empty_halo(device=self.edges.device), self.edges
        halo = build_halo(
            requester=requester,
            item=edge,
            item_owner=self.edge_owner,
            owned=self.edges,
            size=self.size,
            rank=self.rank,
        )
        return halo, slots(self.edge_owner.numel(), owned=self.edges, received=halo.recv_global)

    def sum_over_systems(self, owned_atoms: Tensor) -> Tensor:
        """Per-system sums ``(B, *F)`` of owned per-atom rows ``(n_atoms, *F)`` over every rank
        (e.g. energies from atom contributions), identical on every rank."""
        partial = scatter(owned_atoms, self.atom_system, dim=0, dim_size=self.num_systems)
        return reduce_partial(partial)

    def gather_atoms(self, owned_atoms: Tensor) -> Tensor:
        """Per-atom rows of every rank in global atom order, ``(N, *F)``, on every rank, for
        consumers that every rank runs identically (outputs, losses)."""
        if self.size == 1:
            return owned_atoms
        return gather_replicated(owned_atoms, self.atom_counts)[self.atom_gather_index]
