"""A small message-passing model with triplet terms, written on the graph-parallel runtime.

It uses every mechanism the GP models need: source-atom halo, reverse-edge halo, GemNet-style
triplets ``b -> a <- c`` built on owned edges only, per-system energies reduced over the GP
group, and positions as a replicated input. With a plan of size 1 it is the single-process model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ocp_graphpar.parallel import PartitionPlan, build_partition, copy_replicated, reduce_partial


def local_triplets(edge_dst: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs of distinct owned edges sharing their target: ``(in_edge (T,), out_edge (T,))``."""
    same_target = edge_dst[:, None] == edge_dst[None, :]
    same_target.fill_diagonal_(False)
    out_edge, in_edge = same_target.nonzero().T
    return in_edge, out_edge


class TripletMP(nn.Module):
    def __init__(self, hidden: int = 8, num_rbf: int = 6, cutoff: float = 4.0, layers: int = 2):
        super().__init__()
        self.cutoff = cutoff
        self.embed = nn.Embedding(100, hidden)
        self.centers = nn.Parameter(torch.linspace(0.5, cutoff, num_rbf))
        self.message = nn.ModuleList(nn.Linear(2 * hidden + num_rbf, hidden) for _ in range(layers))
        self.swap = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(layers))
        self.angle = nn.ModuleList(nn.Linear(3, hidden) for _ in range(layers))
        self.readout = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, graph, plan: PartitionPlan) -> Tensor:
        """Per-system energies ``(B,)``, the same on every rank."""
        pos = copy_replicated(graph.pos)
        src, dst = graph.edge_index[:, plan.edges]
        offsets = torch.einsum(
            "ek,ekj->ej", graph.cell_offsets[plan.edges], graph.cell[graph.batch[dst]]
        )
        vec = pos[src] + offsets - pos[dst]  # (n_edges, 3)
        dist = vec.norm(dim=-1, keepdim=True)
        rbf = torch.exp(-((dist - self.centers) ** 2)) * torch.cos(
            torch.pi * dist / (2 * self.cutoff)
        )

        t_in, t_out = local_triplets(plan.edge_dst)
        cos = (vec[t_in] * vec[t_out]).sum(-1) / (dist[t_in] * dist[t_out]).squeeze(-1)
        angle_basis = torch.stack([cos, cos**2, torch.ones_like(cos)], dim=-1)  # (T, 3)

        h = self.embed(graph.atomic_numbers[plan.atoms])  # (n_atoms, hidden)
        for message, swap, angle in zip(self.message, self.swap, self.angle):
            m = torch.tanh(message(torch.cat([plan.source_rows(h), h[plan.edge_dst], rbf], -1)))
            m = m + swap(plan.reverse_rows(m))
            triplet = torch.zeros_like(m).index_add(0, t_out, m[t_in] * angle(angle_basis))
            m = m + torch.tanh(triplet)
            h = h + torch.zeros_like(h).index_add(0, plan.edge_dst, m)
        atom_energy = self.readout(h).squeeze(-1)
        partial = atom_energy.new_zeros(graph.num_systems).index_add(
            0, graph.batch[plan.atoms], atom_energy
        )
        return reduce_partial(partial)


def energy_forces_and_grads(graph, seed: int = 0, plan_kwargs: dict | None = None) -> dict:
    """Run on one rank: energies, forces, first- and second-order parameter gradients.

    The loss is ``sum(E^2) + sum(F^2)`` with ``F = -dE/dpos`` kept differentiable, so its
    parameter gradient is second order. Gradients are this rank's partial sums.
    """
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    model = TripletMP().double()
    plan = build_partition(
        graph.batch,
        graph.pos,
        graph.cell,
        graph.edge_index,
        reverse_edge=graph.reverse_edge,
        **(plan_kwargs or {}),
    )
    graph.pos.requires_grad_(True)
    energy = model(graph, plan)
    (grad_pos,) = torch.autograd.grad(energy.sum(), graph.pos, create_graph=True)
    forces = -grad_pos
    params = list(model.parameters())
    energy_grads = torch.autograd.grad(energy.sum(), params, retain_graph=True)
    loss = (energy**2).sum() + (forces**2).sum()
    loss_grads = torch.autograd.grad(loss, params)
    return {
        "energy": energy.detach(),
        "forces": forces.detach(),
        "energy_grads": [g.detach() for g in energy_grads],
        "loss_grads": [g.detach() for g in loss_grads],
        "num_atoms": plan.num_atoms,
        "num_edges": plan.num_edges,
        "num_triplets": local_triplets(plan.edge_dst)[0].numel(),
        "stats": plan.stats,
    }
