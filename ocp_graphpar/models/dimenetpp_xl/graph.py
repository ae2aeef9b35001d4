"""One rank's share of a DimeNet++ graph: owned edges, owned triplets, and their input edges.

DimeNet++ passes messages along triplets ``k -> j -> i``: the output edge ``j -> i`` is owned by
the owner of ``i`` (so messages sum into owned edges and atoms with no communication), while
the input edge ``k -> j`` belongs to the owner of ``j``. Each rank computes the down-projected
``int_emb_size`` features of its own edges, and one halo exchange per block brings those of the
input edges that peers own; positions are replicated, so every distance, angle and basis a
rank needs is computed locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ocp_graphpar.parallel import Halo, PartitionPlan


@dataclass
class TripletGraph:
    """The DimeNet++ graph as one GP rank sees it.

    Attributes:
        plan: the partition plan (atoms and edges ``j -> i`` owned by the owner of ``i``).
        input_halo: exchange of input-edge features owned by peers.
        held_edges: ``(n_held,)`` global ids of the held edges: owned, then halo edges.
        distance: ``(n_held,)`` lengths of the held edges: owned edges, then halo edges.
        edge_src_global, edge_dst_global: ``(n_edges,)`` global atom ids of owned edges.
        angle: ``(T,)`` angle of each owned triplet ``k -> j -> i``.
        idx_kj: ``(T,)`` input edge of each triplet, as a held-edge row.
        idx_ji: ``(T,)`` output edge of each triplet, as an owned-edge row.
    """

    plan: PartitionPlan
    input_halo: Halo
    held_edges: Tensor
    distance: Tensor
    edge_src_global: Tensor
    edge_dst_global: Tensor
    angle: Tensor
    idx_kj: Tensor
    idx_ji: Tensor


def build_triplet_graph(model, data) -> TripletGraph:
    """Partition ``data`` over the GP group and build this rank's DimeNet++ graph.

    Args:
        model: a :class:`~ocp_graphpar.models.DimeNetPPXL` (its graph settings and
            ``detach_angles`` are read).
        data: a fairchem batch.
    """
    view = model.replicated(data)
    graph = model.generate_graph(view)
    src, dst = graph.edge_index  # j -> i
    num_atoms = data.atomic_numbers.shape[0]
    in_degree = torch.bincount(dst, minlength=num_atoms)
    plan = model.partition(data, graph.edge_index, triplets_per_edge=in_degree[src])
    idx_kj, idx_ji = _owned_triplets(plan.edges, src, dst, graph.cell_offsets, in_degree)

    input_halo, held = _input_halo(plan, src, dst, in_degree)

    held_edges = torch.cat([plan.edges, input_halo.recv_global])
    angle = _angles(view.pos, src, dst, graph.offset_distances, idx_kj, idx_ji, model.detach_angles)
    return TripletGraph(
        plan=plan,
        input_halo=input_halo,
        held_edges=held_edges,
        distance=graph.edge_distance[held_edges],
        edge_src_global=plan.owned_edge_rows(src),
        edge_dst_global=plan.owned_edge_rows(dst),
        angle=angle,
        idx_kj=held[idx_kj],
        idx_ji=held[idx_ji],
    )


def graph_size(model, data) -> dict[str, int]:
    """Atoms, edges and triplets of this rank's graph, for the memory planner."""
    graph = build_triplet_graph(model, data)
    return {
        "atoms": graph.plan.num_atoms,
        "edges": graph.plan.num_edges,
        "triplets": int(graph.idx_kj.numel()),
    }


def _input_halo(
    plan: PartitionPlan, src: Tensor, dst: Tensor, in_degree: Tensor
) -> tuple[Halo, Tensor]:
    """The halo of input edges ``k -> j`` that peers own, and every global edge's held row."""
    if plan.size == 1:
        return plan.edge_halo(None, None)
    # Every rank that owns an edge j -> i needs every edge k -> j: pair each edge into j with
    # each rank that owns an edge out of j.
    out_ranks = torch.unique(torch.stack([src, plan.edge_owner]), dim=1)  # (atom j, rank)
    entry, wanted = _edges_into(out_ranks[0], dst, in_degree)
    return plan.edge_halo(out_ranks[1][entry], wanted)


def _owned_triplets(
    owned: Tensor, src: Tensor, dst: Tensor, cell_offsets: Tensor, in_degree: Tensor
) -> tuple[Tensor, Tensor]:
    """Global ids ``(idx_kj, idx_ji)`` of the triplets ``k -> j -> i`` whose output edge
    ``j -> i`` is owned, without the back-and-forth ``i -> j -> i`` (same atom, same image)."""
    entry, idx_kj = _edges_into(src[owned], dst, in_degree)
    idx_ji = owned[entry]
    round_trip = (src[idx_kj] == dst[idx_ji]) & ~torch.any(
        cell_offsets[idx_kj] + cell_offsets[idx_ji] != 0, dim=-1
    )
    return idx_kj[~round_trip], idx_ji[~round_trip]


def _edges_into(atoms: Tensor, dst: Tensor, in_degree: Tensor) -> tuple[Tensor, Tensor]:
    """Every edge ending on each entry of ``atoms``: ``(entry (M,), edge (M,))``."""
    counts = in_degree[atoms]
    entry = torch.repeat_interleave(torch.arange(atoms.numel(), device=dst.device), counts)
    first_row = (torch.cumsum(in_degree, 0) - in_degree)[atoms]
    offset = (
        torch.arange(entry.numel(), device=dst.device) - (torch.cumsum(counts, 0) - counts)[entry]
    )
    return entry, torch.argsort(dst, stable=True)[first_row[entry] + offset]


def _angles(pos, src, dst, offset_distances, idx_kj, idx_ji, detach: bool) -> Tensor:
    """``(T,)`` angle at ``j`` between ``j -> i`` and ``k -> j``, as upstream measures it."""
    if detach:  # upstream DimeNet++: angles carry no gradient (non-conservative forces)
        pos = pos.detach()
    i, j, k = dst[idx_ji], src[idx_ji], src[idx_kj]
    pos_ji = pos[j] - pos[i] + offset_distances[idx_ji]
    pos_kj = pos[k] - pos[j] + offset_distances[idx_kj]
    a = (pos_ji * pos_kj).sum(dim=-1)
    b = torch.cross(pos_ji, pos_kj, dim=-1).norm(dim=-1)
    return torch.atan2(b, a)
