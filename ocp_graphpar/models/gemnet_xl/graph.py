"""One rank's share of a GemNet interaction graph: owned edges, their geometry and triplets.

The radius graph and its symmetric edge order are built on every rank from the full batch
(cheap next to the model, and bit-identical to upstream's distances); everything after that
(triplets, angles, bases) is built for owned edges only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ocp_graphpar.parallel import PartitionPlan


@dataclass
class LocalGraph:
    """The interaction graph as one GP rank sees it.

    Attributes:
        plan: the batch's partition plan.
        distance: ``(n_edges,)`` owned edge lengths ``D_st``.
        direction: ``(n_edges, 3)`` unit vectors ``V_st`` (target -> source, as upstream).
        idx_s: ``(n_edges,)`` source atoms as rows of ``plan.with_halo(...)``.
        idx_t: ``(n_edges,)`` target atoms as owned-atom rows.
        id3_ba, id3_ca, id3_ragged_idx: ``(T,)`` owned triplets ``b -> a <- c`` in local edges.
        kmax: the longest triplet list of an owned edge (read on the host once per forward).
    """

    plan: PartitionPlan
    distance: Tensor
    direction: Tensor
    idx_s: Tensor
    idx_t: Tensor
    id3_ba: Tensor
    id3_ca: Tensor
    id3_ragged_idx: Tensor
    kmax: int


def build_local_graph(model, data) -> LocalGraph:
    """Partition ``data`` over the GP group and build this rank's graph.

    Args:
        model: a :class:`~ocp_graphpar.models.GemNetXL` (its graph settings and upstream's
            helpers are used as upstream uses them).
        data: a fairchem batch.
    """
    edge_index, distance, direction, id_swap = symmetric_edges(model, model.replicated(data))
    plan = model.partition(data, edge_index, reverse_edge=id_swap)
    idx_s, idx_t = plan.edge_src, plan.edge_dst
    id3_ba, id3_ca, id3_ragged_idx, kmax = triplets(
        idx_s, idx_t, num_atoms=plan.num_atoms + plan.atom_halo.num_recv
    )
    return LocalGraph(
        plan=plan,
        distance=plan.owned_edge_rows(distance),
        direction=plan.owned_edge_rows(direction),
        idx_s=idx_s,
        idx_t=idx_t,
        id3_ba=id3_ba,
        id3_ca=id3_ca,
        id3_ragged_idx=id3_ragged_idx,
        kmax=kmax,
    )


def triplets(idx_s: Tensor, idx_t: Tensor, *, num_atoms: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Upstream GemNet-T's triplets ``b -> a <- c``: for every edge ``c -> a``, every other edge
    into ``a``, by source atom (what ``GemNetT.get_triplets`` gives), with one host read for
    the output size where upstream makes about ten.

    Args:
        idx_s, idx_t: ``(E,)`` source and target atoms; ``num_atoms`` bounds both.
    Returns:
        ``id3_ba``, ``id3_ca``, ``id3_ragged_idx`` ``(T,)`` (input edge, output edge, slot in
        the output edge's list) and ``kmax``, the longest list.
    """
    num_edges, device = idx_t.numel(), idx_t.device
    edges = torch.arange(num_edges, device=device)
    by_target = torch.argsort(idx_t * num_atoms + idx_s, stable=True)  # each target's edges
    in_degree = torch.zeros(num_atoms, dtype=torch.long, device=device).index_add_(
        0, idx_t, torch.ones_like(idx_t)
    )
    first = torch.cumsum(in_degree, 0) - in_degree  # (num_atoms,) where a target's edges start
    own_slot = torch.empty_like(by_target)
    own_slot[by_target] = edges
    own_slot = own_slot - first[idx_t]  # (E,) each edge's place among its target's edges

    per_edge = in_degree[idx_t] - 1  # (E,) triplets of each output edge: the other edges in
    total, kmax = torch.stack([per_edge.sum(), per_edge.max()]).tolist() if num_edges else (0, 0)
    id3_ca = torch.repeat_interleave(edges, per_edge, output_size=total)
    slot = torch.arange(total, device=device) - (torch.cumsum(per_edge, 0) - per_edge)[id3_ca]
    place = slot + (slot >= own_slot[id3_ca])  # skip the output edge itself
    id3_ba = by_target[first[idx_t[id3_ca]] + place]
    return id3_ba, id3_ca, slot, kmax


def graph_size(model, data) -> dict[str, int]:
    """Atoms, edges, triplets and the longest triplet list of an edge in this rank's graph
    (GemNet-T drops edges without a reverse), for the memory planner."""
    graph = build_local_graph(model, data)
    return {
        "atoms": graph.plan.num_atoms,
        "edges": int(graph.idx_s.numel()),
        "triplets": int(graph.id3_ba.numel()),
        "kmax": graph.kmax,
    }


def symmetric_edges(model, data) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Upstream GemNet-T's edge set, in its symmetric order, for the whole batch.

    Returns:
        ``edge_index (2, E)``, ``D_st (E,)``, ``V_st (E, 3)`` and ``id_swap (E,)``, the reverse
        of every edge: what ``GemNetT.generate_interaction_graph`` gives, without its triplets.
    """
    graph = model.generate_graph(data)
    direction = -graph.edge_distance_vec / graph.edge_distance[:, None]
    cutoff = None if model.otf_graph or abs(model.cutoff - 6.0) < 1e-8 else model.cutoff
    selected = model.select_edges(
        data=data,
        edge_index=graph.edge_index,
        cell_offsets=graph.cell_offsets,
        neighbors=graph.neighbors,
        edge_dist=graph.edge_distance,
        edge_vector=direction,
        cutoff=cutoff,
    )
    edge_index, _, neighbors, distance, direction = model.reorder_symmetric_edges(*selected)
    return edge_index, distance, direction, reverse_edges(neighbors, num_edges=distance.numel())


def reverse_edges(neighbors: Tensor, *, num_edges: int) -> Tensor:
    """``(E,)`` the reverse of every edge in upstream's symmetric order, where each system's
    ``neighbors[i]`` edges are a half and then the same half reversed, so an edge's reverse
    sits half a system further on (or back). The index arithmetic of upstream's
    ``repeat_blocks`` call, with nothing read on the host."""
    half = neighbors // 2  # (B,)
    system = torch.repeat_interleave(
        torch.arange(neighbors.numel(), device=neighbors.device), neighbors, output_size=num_edges
    )
    edge = torch.arange(num_edges, device=neighbors.device)
    first_half = edge - (torch.cumsum(neighbors, 0) - neighbors)[system] < half[system]
    return torch.where(first_half, edge + half[system], edge - half[system])
