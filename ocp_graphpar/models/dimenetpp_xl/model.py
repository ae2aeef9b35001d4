"""DimeNet++-XL: upstream DimeNet++, graph-parallel, with forces that are ``-dE/dpos``."""

from __future__ import annotations

import torch
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import conditional_grad
from fairchem.core.models.dimenet_plus_plus import DimeNetPlusPlusWrap, InteractionPPBlock
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ocp_graphpar.models.dimenetpp_xl.graph import TripletGraph, build_triplet_graph
from ocp_graphpar.models.gradient_scaling import scale_gradients_for_ddp
from ocp_graphpar.parallel import WorkWeights, counting, reduce_partial


def interaction(
    block: InteractionPPBlock, x: Tensor, rbf: Tensor, sbf: Tensor, graph: TripletGraph
) -> Tensor:
    """One DimeNet++ interaction block on owned edge features ``x (n_edges, hidden)``.

    ``rbf (n_edges, num_radial)`` for owned edges, ``sbf (T, num_spherical * num_radial)`` for
    owned triplets.
    """
    act = block.act
    x_ji = act(block.lin_ji(x))
    x_kj = act(block.lin_kj(x)) * block.lin_rbf2(block.lin_rbf1(rbf))
    x_kj = act(block.lin_down(x_kj))  # (n_edges, int_emb_size): the narrowest edge tensor
    x_kj = torch.cat([x_kj, graph.input_halo.exchange(x_kj)])  # + input edges peers own
    x_kj = x_kj[graph.idx_kj] * block.lin_sbf2(block.lin_sbf1(sbf))  # (T, int_emb_size)
    x_kj = x_kj.new_zeros(x.shape[0], x_kj.shape[1]).index_add(0, graph.idx_ji, x_kj)
    h = x_ji + act(block.lin_up(x_kj))
    for layer in block.layers_before_skip:
        h = layer(h)
    h = act(block.lin(h)) + x
    for layer in block.layers_after_skip:
        h = layer(h)
    return h


@registry.register_model("dimenetpp_xl")
class DimeNetPPXL(DimeNetPlusPlusWrap):
    """DimeNet++ split over the ranks of fairchem's GP group, with exact forces.

    Takes upstream ``dimenetplusplus``'s arguments and has its parameter names and shapes.
    Forces are ``-dE/dpos`` including the angular terms; upstream computes its triplet angles
    from detached positions, so its "forces" are not the gradient of its energy.

    Extra args:
        detach_angles: reproduce upstream's detached-angle forces (non-conservative; only for
            fine-tuning upstream checkpoints that were trained that way).
        activation_checkpointing: recompute each interaction block in the backward pass.
        partition_weights: work estimate per ``atom``, ``edge``, ``triplet`` for balancing.
    """

    def __init__(
        self,
        *args,
        detach_angles: bool = False,
        activation_checkpointing: bool = False,
        partition_weights: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.detach_angles = detach_angles
        self.activation_checkpointing = activation_checkpointing
        self.partition_weights = WorkWeights(**(partition_weights or {}))
        scale_gradients_for_ddp(self)
        self.last_forward: dict = {}

    def forward(self, data) -> dict[str, Tensor]:
        """Per-system energies ``(B, 1)`` and forces ``-dE/dpos (N, 3)`` on every GP rank;
        ``last_forward`` then holds the partition statistics and this rank's collectives."""
        if self.regress_forces:
            data.pos.requires_grad_(True)
        with counting() as comm:
            energy, plan = self._energy(data)
        self.last_forward = {"partition": plan.stats, "comm": comm.as_dict()}
        outputs = {"energy": energy}
        if self.regress_forces:
            (grad,) = torch.autograd.grad(energy.sum(), data.pos, create_graph=True)
            outputs["forces"] = -grad
        return outputs

    @conditional_grad(torch.enable_grad())
    def _energy(self, data):
        graph = build_triplet_graph(
            self, data, detach_angles=self.detach_angles, weights=self.partition_weights
        )
        n_edges = graph.plan.num_edges
        rbf_held = self.rbf(graph.distance)  # (n_held, num_radial)
        sbf = self.sbf(graph.distance, graph.angle, graph.idx_kj)
        rbf = rbf_held[:n_edges]

        x = self.emb(data.atomic_numbers.long(), rbf, graph.edge_dst_global, graph.edge_src_global)
        P = self.output_blocks[0](x, rbf, graph.edge_dst, num_nodes=graph.plan.num_atoms)
        for block, output_block in zip(self.interaction_blocks, self.output_blocks[1:]):
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(interaction, block, x, rbf, sbf, graph, use_reentrant=False)
            else:
                x = interaction(block, x, rbf, sbf, graph)
            P = P + output_block(x, rbf, graph.edge_dst, num_nodes=graph.plan.num_atoms)
        partial = P.new_zeros(graph.num_systems, P.shape[1]).index_add(0, graph.atom_batch, P)
        return reduce_partial(partial), graph.plan
