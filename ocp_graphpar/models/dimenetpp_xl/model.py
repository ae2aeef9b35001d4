"""DimeNet++-XL: upstream DimeNet++, graph-parallel, with forces that are ``-dE/dpos``."""

from __future__ import annotations

from collections.abc import Callable

from fairchem.core.common.registry import registry
from fairchem.core.models.dimenet_plus_plus import DimeNetPlusPlusWrap, InteractionPPBlock
from torch import Tensor
from torch_scatter import scatter

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.models.base import GraphParallelModel, ShardedOutput
from ocp_graphpar.models.checkpointing import call
from ocp_graphpar.models.dimenetpp_xl.graph import TripletGraph, build_triplet_graph


def halo_input_features(
    block: InteractionPPBlock, x: Tensor, rbf_held: Tensor, graph: TripletGraph
) -> Tensor:
    """Down-projected features ``(n_held, int_emb_size)`` of every edge this rank's triplets
    read: owned edges, then the input edges peers own (exchanged after the down-projection,
    the narrowest edge tensor)."""
    act = block.act
    x_kj = act(block.lin_kj(x)) * block.lin_rbf2(block.lin_rbf1(rbf_held[: x.shape[0]]))
    x_kj = act(block.lin_down(x_kj))  # (n_edges, int_emb_size)
    return graph.input_halo.extend(x_kj)


def messages(
    block: InteractionPPBlock,
    x: Tensor,
    rbf_held: Tensor,
    sbf: Tensor,
    graph: TripletGraph,
    input_features=halo_input_features,
) -> Tensor:
    """The message half of a DimeNet++ interaction block on owned edge features
    ``x (n_edges, hidden)``: the directional messages of every triplet, summed into their edge.

    ``rbf_held (n_held, num_radial)`` for held edges, ``sbf (T, num_spherical * num_radial)``
    for owned triplets; ``input_features`` gives the held input edges' features.
    """
    act = block.act
    x_ji = act(block.lin_ji(x))
    x_kj = input_features(block, x, rbf_held, graph)[graph.idx_kj] * block.lin_sbf2(
        block.lin_sbf1(sbf)
    )  # (T, int_emb_size)
    # scatter, not index_add: its backward keeps the index only, not the (T, int_emb_size) rows.
    x_kj = scatter(x_kj, graph.idx_ji, dim=0, dim_size=x.shape[0])
    return x_ji + act(block.lin_up(x_kj))


def skip(block: InteractionPPBlock, h: Tensor, x: Tensor) -> Tensor:
    """The block's skip connection: ``act(lin(h)) + x``, both ``(n_edges, hidden)``."""
    return block.act(block.lin(h)) + x


def interaction(
    block: InteractionPPBlock,
    x: Tensor,
    rbf_held: Tensor,
    sbf: Tensor,
    graph: TripletGraph,
    input_features=halo_input_features,
    *,
    run: Callable[..., Tensor] = call,
) -> Tensor:
    """One DimeNet++ interaction block on owned edge features ``x (n_edges, hidden)``.

    ``run(unit, *args)`` calls each of its units (messages, residual layers, skip): the model
    passes its checkpointing, so each unit is recomputed on its own, and a unit's gradient graph
    is all that is alive at once in the loss's backward pass.
    """
    h = run(messages, block, x, rbf_held, sbf, graph, input_features)
    for layer in block.layers_before_skip:
        h = run(layer, h)
    h = run(skip, block, h, x)
    for layer in block.layers_after_skip:
        h = run(layer, h)
    return h


@registry.register_model("dimenetpp_xl")
class DimeNetPPXL(GraphParallelModel, DimeNetPlusPlusWrap):
    """DimeNet++ split over the ranks of fairchem's GP group, with exact forces.

    Takes upstream ``dimenetplusplus``'s arguments and has its parameter names and shapes.
    Forces are ``-dE/dpos`` including the angular terms; upstream computes its triplet angles
    from detached positions, so its "forces" are not the gradient of its energy.

    Extra args:
        detach_angles: reproduce upstream's detached-angle forces (non-conservative; only for
            fine-tuning upstream checkpoints that were trained that way).
        activation_checkpointing: recompute the embedding, the output blocks and each unit of
            the interaction blocks in the backward pass (and their gradients, which -dE/dpos
            differentiates again).
        partition_weights: work estimate per ``atom``, ``edge``, ``triplet`` for balancing.
    """

    display_name = "DimeNet++-XL"

    #: How a block obtains its held input edges' features (a benchmark swaps it).
    input_features = staticmethod(halo_input_features)

    def __init__(
        self,
        *args,
        detach_angles: bool = False,
        activation_checkpointing: bool = False,
        partition_weights: dict | None = None,
        **kwargs,
    ) -> None:
        if "input_exchange" in kwargs:
            raise UserFacingError(
                "input_exchange is no longer a DimeNet++-XL option: the model always exchanges "
                "the down-projected input-edge features; the all-gather variant is a benchmark "
                "contender (ocp_graphpar.measure.contenders, 'ours_all_gather'). Remove the key."
            )
        super().__init__(*args, **kwargs)
        self.detach_angles = detach_angles
        self.setup_graph_parallel(
            activation_checkpointing=activation_checkpointing,
            partition_weights=partition_weights,
        )

    @property
    def conservative_forces(self) -> bool:
        return bool(self.regress_forces)

    def sharded_forward(self, data) -> ShardedOutput:
        graph = build_triplet_graph(self, data)
        plan = graph.plan
        rbf_held = self.rbf(graph.distance)  # (n_held, num_radial)
        sbf = self.sbf(graph.distance, graph.angle, graph.idx_kj)
        rbf = rbf_held[: plan.num_edges]

        x = self.checkpointed(
            self.emb, data.atomic_numbers.long(), rbf, graph.edge_dst_global, graph.edge_src_global
        )  # (n_edges, hidden)
        # Output blocks are checkpointed too: with -dE/dpos their per-edge products would stay
        # alive in the forces' graph until the loss's backward pass.
        P = self.checkpointed(self.output_blocks[0], x, rbf, plan.edge_dst, plan.num_atoms)
        for block, output_block in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = interaction(
                block, x, rbf_held, sbf, graph, self.input_features, run=self.checkpointed
            )
            P = P + self.checkpointed(output_block, x, rbf, plan.edge_dst, plan.num_atoms)
        return ShardedOutput(plan=plan, atom_energy=P)
