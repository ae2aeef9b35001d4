"""DimeNet++-XL: upstream DimeNet++, graph-parallel, with forces that are ``-dE/dpos``."""

from __future__ import annotations

import torch
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import conditional_grad
from fairchem.core.models.dimenet_plus_plus import DimeNetPlusPlusWrap, InteractionPPBlock
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.models.dimenetpp_xl.graph import TripletGraph, build_triplet_graph
from ocp_graphpar.models.gradient_scaling import scale_gradients_for_ddp
from ocp_graphpar.parallel import WorkWeights, counting, gather_rows, reduce_partial

EXCHANGES = ("halo", "all_gather")


def input_edge_features(
    block: InteractionPPBlock, x: Tensor, rbf_held: Tensor, graph: TripletGraph, exchange: str
) -> Tensor:
    """Down-projected features ``(n_held, int_emb_size)`` of every edge this rank's triplets
    read: owned edges, then the input edges peers own.

    ``"halo"`` computes them for owned edges and exchanges the narrow result for cut input
    edges; ``"all_gather"`` (the simple alternative, for comparison) gathers every edge's
    ``hidden_channels``-wide features and computes the held ones locally.
    """
    act = block.act
    if exchange == "all_gather":
        plan = graph.plan
        x = gather_rows(x, plan.stats.edges)[plan.edge_gather_index[graph.held_edges]]
        x_kj = act(block.lin_kj(x)) * block.lin_rbf2(block.lin_rbf1(rbf_held))
        return act(block.lin_down(x_kj))
    x_kj = act(block.lin_kj(x)) * block.lin_rbf2(block.lin_rbf1(rbf_held[: x.shape[0]]))
    x_kj = act(block.lin_down(x_kj))  # (n_edges, int_emb_size): the narrowest edge tensor
    return torch.cat([x_kj, graph.input_halo.exchange(x_kj)])


def interaction(
    block: InteractionPPBlock,
    x: Tensor,
    rbf_held: Tensor,
    sbf: Tensor,
    graph: TripletGraph,
    exchange: str = "halo",
) -> Tensor:
    """One DimeNet++ interaction block on owned edge features ``x (n_edges, hidden)``.

    ``rbf_held (n_held, num_radial)`` for held edges, ``sbf (T, num_spherical * num_radial)``
    for owned triplets.
    """
    act = block.act
    x_ji = act(block.lin_ji(x))
    x_kj = input_edge_features(block, x, rbf_held, graph, exchange)[graph.idx_kj] * block.lin_sbf2(
        block.lin_sbf1(sbf)
    )  # (T, int_emb_size)
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
        input_exchange: ``"halo"`` (default) exchanges the down-projected ``int_emb_size``
            features of cut input edges; ``"all_gather"`` gathers every edge's
            ``hidden_channels`` features instead (the simple design, kept for comparison).
    """

    def __init__(
        self,
        *args,
        input_exchange: str = "halo",
        detach_angles: bool = False,
        activation_checkpointing: bool = False,
        partition_weights: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if input_exchange not in EXCHANGES:
            raise UserFacingError(
                f"input_exchange must be one of {EXCHANGES}, got {input_exchange!r}"
            )
        self.input_exchange = input_exchange
        self.detach_angles = detach_angles
        self.activation_checkpointing = activation_checkpointing
        self.partition_weights = WorkWeights(**(partition_weights or {}))
        scale_gradients_for_ddp(self)
        self.last_forward: dict = {}

    @conditional_grad(torch.enable_grad())
    def forward(self, data) -> dict[str, Tensor]:
        """Per-system energies ``(B, 1)`` and forces ``-dE/dpos (N, 3)`` on every GP rank;
        ``last_forward`` then holds the partition statistics, this rank's input-edge halo size
        and its collectives."""
        if self.regress_forces:
            data.pos.requires_grad_(True)
        with counting() as comm:
            energy, graph = self._energy(data)
        self.last_forward = {
            "partition": graph.plan.stats,
            "input_halo": graph.input_halo.num_recv,
            "comm": comm.as_dict(),
        }
        outputs = {"energy": energy}
        if self.regress_forces:
            (grad,) = torch.autograd.grad(energy.sum(), data.pos, create_graph=True)
            outputs["forces"] = -grad
        return outputs

    def _energy(self, data):
        graph = build_triplet_graph(
            self, data, detach_angles=self.detach_angles, weights=self.partition_weights
        )
        n_edges = graph.plan.num_edges
        rbf_held = self.rbf(graph.distance)  # (n_held, num_radial)
        sbf = self.sbf(graph.distance, graph.angle, graph.idx_kj)
        rbf = rbf_held[:n_edges]

        x = self.emb(data.atomic_numbers.long(), rbf, graph.edge_dst_global, graph.edge_src_global)
        P = self.output_blocks[0](x, rbf, graph.plan.edge_dst, num_nodes=graph.plan.num_atoms)
        for block, output_block in zip(self.interaction_blocks, self.output_blocks[1:]):
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(
                    interaction,
                    block,
                    x,
                    rbf_held,
                    sbf,
                    graph,
                    self.input_exchange,
                    use_reentrant=False,
                )
            else:
                x = interaction(block, x, rbf_held, sbf, graph, self.input_exchange)
            P = P + output_block(x, rbf, graph.plan.edge_dst, num_nodes=graph.plan.num_atoms)
        partial = P.new_zeros(graph.num_systems, P.shape[1]).index_add(0, graph.atom_batch, P)
        return reduce_partial(partial), graph
