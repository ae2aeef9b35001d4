"""Build the :class:`PartitionPlan` of a batch.

Built once per batch, from data every rank already has (batch vector, positions, cell, edges,
triplet counts), so every rank computes the same plan with no communication; the owners come
from :mod:`ocp_graphpar.parallel.balance`, the exchanges from :mod:`ocp_graphpar.parallel.halo`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from ocp_graphpar.parallel.balance import (
    WorkWeights,
    atom_work,
    balanced_spatial_owner,
    resolve_triplets,
)
from ocp_graphpar.parallel.groups import gp_rank, gp_size
from ocp_graphpar.parallel.halo import build_halo, empty_halo, halo_sizes
from ocp_graphpar.parallel.indexing import rank_counts, rank_major, slots, sum_by_rank
from ocp_graphpar.parallel.plan import PartitionPlan, PartitionStats


def build_partition(
    batch: Tensor,
    pos: Tensor,
    cell: Tensor | None,
    edge_index: Tensor,
    *,
    size: int | None = None,
    rank: int | None = None,
    num_systems: int | None = None,
    reverse_edge: Tensor | None = None,
    triplets_per_edge: Tensor | int | None = None,
    weights: WorkWeights | None = None,
    atom_owner: Tensor | None = None,
) -> PartitionPlan:
    """Partition a batch over ``size`` GP ranks and return the plan of rank ``rank``
    (by default this rank and its GP group).

    Args:
        batch: ``(N,)`` system of each atom, non-decreasing.
        pos: ``(N, 3)`` positions (only read, never differentiated).
        cell: ``(B, 3, 3)`` cells, rows are lattice vectors; ``None`` or singular for molecules.
        edge_index: ``(2, E)`` ``[source, target]`` atom ids.
        num_systems: systems in the batch (B); by default the last atom's system + 1.
        reverse_edge: ``(E,)`` id of each edge's reverse edge (GemNet's ``id_swap``), optional.
        triplets_per_edge: ``(E,)`` triplets whose output edge is each edge, or one count for
            every edge (``0`` for models without triplets); by default the in-degree of the
            target minus one (GemNet's ``b -> a <- c``).
        weights: work estimate for balancing.
        atom_owner: ``(N,)`` a given assignment of atoms to ranks (e.g. to compare partitions).
    """
    size = gp_size() if size is None else size
    rank = gp_rank() if rank is None else rank
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a GP group of size {size}")
    num_atoms = batch.numel()
    if num_systems is None:
        num_systems = int(batch[-1]) + 1 if num_atoms else 0
    if size == 1 and atom_owner is None:
        plan = _whole_batch_plan(
            batch,
            edge_index,
            num_systems=num_systems,
            reverse_edge=reverse_edge,
            triplets_per_edge=triplets_per_edge,
            weights=weights,
        )
    else:
        # Built on the host: the balancer and the halos read counts and sizes throughout, which
        # on a GPU would stall its stream at every read; a few copies each way cost less.
        def host(x):
            return x.detach().cpu() if isinstance(x, Tensor) else x

        plan = _split_plan(
            host(batch),
            host(pos),
            host(cell),
            host(edge_index),
            size=size,
            rank=rank,
            num_systems=num_systems,
            reverse_edge=host(reverse_edge),
            triplets_per_edge=host(triplets_per_edge),
            weights=weights,
            atom_owner=host(atom_owner),
        ).to(batch.device)
    record_plan(plan)
    return plan


def _whole_batch_plan(
    batch: Tensor,
    edge_index: Tensor,
    *,
    num_systems: int,
    reverse_edge: Tensor | None,
    triplets_per_edge: Tensor | int | None,
    weights: WorkWeights | None,
) -> PartitionPlan:
    """The plan of a GP group of one: every row is owned, nothing is exchanged. Built from
    shapes alone, so it reads nothing on the host (no stream stalls on a GPU)."""
    num_atoms, num_edges, device = batch.numel(), edge_index.shape[1], batch.device
    atoms = torch.arange(num_atoms, device=device)
    edges = torch.arange(num_edges, device=device)
    no_halo = empty_halo(device=device)

    def measure() -> PartitionStats:
        triplets = resolve_triplets(triplets_per_edge, edge_index[1], num_atoms=num_atoms)
        work = atom_work(edge_index, num_atoms, triplets_per_edge=triplets, weights=weights)
        return PartitionStats(
            atoms=[num_atoms],
            edges=[num_edges],
            triplets=[int(triplets.sum())],
            load=[float(work.sum())],
            atom_halo=[0],
            reverse_halo=[0],
            cut_edges=0,
        )

    return PartitionPlan(
        rank=0,
        size=1,
        num_systems=num_systems,
        atom_owner=torch.zeros_like(atoms),
        edge_owner=torch.zeros_like(edges),
        atoms=atoms,
        atom_system=batch,
        edges=edges,
        edge_src=edge_index[0],
        edge_dst=edge_index[1],
        edge_reverse=reverse_edge,
        atom_halo=no_halo,
        reverse_halo=None if reverse_edge is None else no_halo,
        atom_gather_index=atoms,
        atom_counts=[num_atoms],
        measure=measure,
    )


def _split_plan(
    batch: Tensor,
    pos: Tensor,
    cell: Tensor | None,
    edge_index: Tensor,
    *,
    size: int,
    rank: int,
    num_systems: int,
    reverse_edge: Tensor | None,
    triplets_per_edge: Tensor | int | None,
    weights: WorkWeights | None,
    atom_owner: Tensor | None,
) -> PartitionPlan:
    """The plan of ``rank`` in a GP group of ``size`` ranks."""
    num_atoms, device = batch.numel(), batch.device
    src, dst = edge_index[0], edge_index[1]
    work = atom_work(edge_index, num_atoms, triplets_per_edge=triplets_per_edge, weights=weights)
    if atom_owner is None:
        atom_owner = balanced_spatial_owner(batch, pos, cell, edge_index, work, size)
    atom_owner = atom_owner.to(device=device, dtype=torch.long)
    edge_owner = atom_owner.index_select(0, dst)

    atom_major = rank_major(atom_owner, size=size)
    atoms = atom_major.owned_by(rank)
    edges = (edge_owner == rank).nonzero().flatten()

    atom_halo = build_halo(
        requester=edge_owner,
        item=src,
        item_owner=atom_owner,
        owned=atoms,
        size=size,
        rank=rank,
    )
    atom_slot = slots(num_atoms, owned=atoms, received=atom_halo.recv_global)

    reverse_halo = edge_reverse = None
    if reverse_edge is not None:
        reverse_halo = build_halo(
            requester=edge_owner,
            item=reverse_edge,
            item_owner=edge_owner,
            owned=edges,
            size=size,
            rank=rank,
        )
        edge_slot = slots(src.numel(), owned=edges, received=reverse_halo.recv_global)
        edge_reverse = edge_slot.index_select(0, reverse_edge.index_select(0, edges))
    atom_counts = atom_major.counts.tolist()

    def measure() -> PartitionStats:
        return PartitionStats(
            atoms=atom_counts,
            edges=rank_counts(edge_owner, size=size),
            triplets=sum_by_rank(
                resolve_triplets(triplets_per_edge, dst, num_atoms=num_atoms),
                edge_owner,
                size=size,
            ),
            load=torch.zeros(size, dtype=torch.double, device=device)
            .index_add_(0, atom_owner, work)
            .tolist(),
            atom_halo=halo_sizes(requester=edge_owner, item=src, item_owner=atom_owner, size=size),
            reverse_halo=[0] * size
            if reverse_edge is None
            else halo_sizes(
                requester=edge_owner, item=reverse_edge, item_owner=edge_owner, size=size
            ),
            cut_edges=int((atom_owner[src] != atom_owner[dst]).sum()),
        )

    return PartitionPlan(
        rank=rank,
        size=size,
        num_systems=num_systems,
        atom_owner=atom_owner,
        edge_owner=edge_owner,
        atoms=atoms,
        atom_system=batch.index_select(0, atoms),
        edges=edges,
        edge_src=atom_slot.index_select(0, src.index_select(0, edges)),
        edge_dst=atom_slot.index_select(0, dst.index_select(0, edges)),
        edge_reverse=edge_reverse,
        atom_halo=atom_halo,
        reverse_halo=reverse_halo,
        atom_gather_index=atom_major.position,
        atom_counts=atom_counts,
        measure=measure,
    )


_PLAN_RECORDERS: list[list[PartitionPlan]] = []


def record_plan(plan: PartitionPlan) -> None:
    """Hand ``plan`` to every open :func:`recording_plans`."""
    for recorder in _PLAN_RECORDERS:
        recorder.append(plan)


@contextlib.contextmanager
def recording_plans() -> Iterator[list[PartitionPlan]]:
    """Collect every partition plan built inside the block (in build order), e.g. to read the
    partition statistics of a model's forward pass."""
    plans: list[PartitionPlan] = []
    _PLAN_RECORDERS.append(plans)
    try:
        yield plans
    finally:
        _PLAN_RECORDERS.remove(plans)
