"""PaiNN-XL: upstream PaiNN, graph-parallel, with upstream's parameters and weights.

PaiNN passes messages along edges ``j -> i`` into the target atom, and every other layer is
per atom. So a rank owns atoms and the edges into them; each layer's messages need the
source atoms' projected scalars ``xh (n_atoms, 3 * hidden)`` and vectors
``vec (n_atoms, 3, hidden)``, which one halo exchange per layer brings from their owners.
Messages sum into owned atoms, and the update, the scale factor and both output heads
touch owned atoms only.
"""

from __future__ import annotations

import torch
from fairchem.core.common.registry import registry
from fairchem.core.models.painn.painn import PaiNN, PaiNNMessage, PaiNNUpdate
from fairchem.core.modules.scaling import ScaleFactor
from torch import Tensor
from torch_scatter import scatter

from ocp_graphpar.models.base import GraphParallelModel, ShardedOutput
from ocp_graphpar.parallel import PartitionPlan


def build_graph(model: PaiNNXL, data) -> tuple[PartitionPlan, Tensor, Tensor]:
    """Upstream's symmetric edges of the whole batch, partitioned (PaiNN has no triplets):
    the plan, and the owned edges' lengths ``(n_edges,)`` and unit vectors ``(n_edges, 3)``."""
    edge_index, _, distance, direction, _ = model.generate_graph_values(model.replicated(data))
    plan = model.partition(data, edge_index, triplets_per_edge=0)
    return plan, plan.owned_edge_rows(distance), plan.owned_edge_rows(direction)


def message(
    layer: PaiNNMessage,
    x: Tensor,
    vec: Tensor,
    edge_rbf: Tensor,
    edge_vector: Tensor,
    plan: PartitionPlan,
) -> tuple[Tensor, Tensor]:
    """Messages summed into owned atoms: ``dx (n_atoms, H)``, ``dvec (n_atoms, 3, H)``.

    ``edge_rbf (n_edges, num_rbf)`` and ``edge_vector (n_edges, 3)`` of owned edges.
    """
    hidden, n_atoms = layer.hidden_channels, x.shape[0]
    xh = layer.x_proj(layer.x_layernorm(x))  # (n_atoms, 3H)
    xh_held, vec_held = xh, vec
    if plan.size > 1:  # one exchange carries both source-atom inputs of the message
        held = plan.with_halo(torch.cat([xh, vec.reshape(n_atoms, 3 * hidden)], dim=1))
        xh_held, vec_held = held.split(3 * hidden, dim=1)
        vec_held = vec_held.reshape(-1, 3, hidden)
    # Gathered per part, so the per-edge tensors are contiguous (elementwise work is ~2x
    # faster on CPU than on strided halves of one (n_edges, 6H) tensor).
    xh_j = xh_held.index_select(0, plan.edge_src)  # (n_edges, 3H)
    vec_j = vec_held.index_select(0, plan.edge_src)  # (n_edges, 3, H)

    dx, xh2, xh3 = torch.split(xh_j * layer.rbf_proj(edge_rbf), hidden, dim=-1)
    along_edge = xh3.unsqueeze(1) * edge_vector.unsqueeze(2)  # (n_edges, 3, H)
    dvec = (vec_j * (xh2 * layer.inv_sqrt_3).unsqueeze(1) + along_edge) * layer.inv_sqrt_h
    # scatter's backward keeps only the index; index_add's would keep the (n_edges, 3, H) source
    return (
        scatter(dx, plan.edge_dst, dim=0, dim_size=n_atoms),
        scatter(dvec, plan.edge_dst, dim=0, dim_size=n_atoms),
    )


def layer(
    message_layer: PaiNNMessage,
    update_layer: PaiNNUpdate,
    scale: ScaleFactor,
    x: Tensor,
    vec: Tensor,
    edge_rbf: Tensor,
    edge_vector: Tensor,
    plan: PartitionPlan,
) -> tuple[Tensor, Tensor]:
    """One PaiNN layer (message, update, scale) on owned atoms, as upstream's forward."""
    dx, dvec = message(message_layer, x, vec, edge_rbf, edge_vector, plan)
    x, vec = (x + dx) * update_layer.inv_sqrt_2, vec + dvec
    dx, dvec = update_layer(x, vec)
    return scale(x + dx), vec + dvec


@registry.register_model("painn_xl")
class PaiNNXL(GraphParallelModel, PaiNN):
    """PaiNN split over the ranks of fairchem's GP group ("owner computes").

    Takes upstream ``painn``'s arguments and has its parameter names and shapes. With
    ``direct_forces: False`` the forces are ``-dE/dpos``; upstream's are the gradient of the
    summed atom features instead of the energy.

    Extra args:
        activation_checkpointing: recompute each layer in the backward pass.
        partition_weights: work estimate per ``atom`` and ``edge`` for balancing.
        auto_fit_scale_factors: fit unfitted scale factors on the first training batch.
    """

    display_name = "PaiNN-XL"

    def __init__(
        self,
        *args,
        activation_checkpointing: bool = False,
        partition_weights: dict | None = None,
        auto_fit_scale_factors: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.setup_graph_parallel(
            activation_checkpointing=activation_checkpointing,
            partition_weights=partition_weights,
            auto_fit_scale_factors=auto_fit_scale_factors,
        )

    def sharded_forward(self, data) -> ShardedOutput:
        plan, distance, edge_vector = build_graph(self, data)
        edge_rbf = self.radial_basis(distance)  # (n_edges, num_rbf)

        x = self.atom_emb(plan.owned_atom_rows(data.atomic_numbers.long()))  # (n_atoms, H)
        vec = x.new_zeros(x.shape[0], 3, x.shape[1])
        for i, (message_layer, update_layer) in enumerate(
            zip(self.message_layers, self.update_layers)
        ):
            scale = getattr(self, f"upd_out_scalar_scale_{i}")
            x, vec = self.checkpointed(
                layer, message_layer, update_layer, scale, x, vec, edge_rbf, edge_vector, plan
            )
        forces = self.out_forces(x, vec).reshape(-1, 3) if self.direct_forces else None
        return ShardedOutput(
            plan=plan, atom_energy=self.out_energy(x).squeeze(1), atom_forces=forces
        )


def painn_graph_size(model: PaiNNXL, data) -> dict[str, int]:
    """Atoms and edges of this rank's graph, for the memory planner."""
    plan, _, _ = build_graph(model, data)
    return {"atoms": plan.num_atoms, "edges": plan.num_edges, "triplets": 0}
