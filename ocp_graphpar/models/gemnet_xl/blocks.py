"""Graph-parallel forward passes of upstream GemNet-T's interaction blocks.

The blocks are fairchem's own modules (so parameter names and shapes are upstream's); only
their forward passes are written here, to read the :class:`LocalGraph` of a rank. Two halo
exchanges per block carry everything that crosses the cut: the source-atom embeddings for
``concat_layer`` (``emb_size_atom`` wide) and the bilinear output of reverse edges
(``emb_size_bil_trip`` wide), up-projected by ``up_projection_ac`` after the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

from fairchem.core.models.gemnet.layers.interaction_block import (
    InteractionBlockTripletsOnly,
    TripletInteraction,
)
from torch import Tensor

from ocp_graphpar.models.gemnet_xl.bilinear import bilinear
from ocp_graphpar.models.gemnet_xl.graph import LocalGraph


@dataclass
class Bases:
    """Per-edge and per-triplet bases shared by every block (owned rows only).

    ``rbf (n_edges, num_radial)``, ``rbf3 (n_edges, emb_size_rbf)``, ``cbf3`` (upstream's pair for the efficient bilinear
    layer), ``rbf_h (n_edges, emb_size_rbf)``, ``rbf_out (n_edges, emb_size_rbf)``.
    """

    rbf: Tensor
    rbf3: Tensor
    cbf3: tuple[Tensor, Tensor]
    rbf_h: Tensor
    rbf_out: Tensor


def triplet_interaction(
    block: TripletInteraction, m: Tensor, bases: Bases, graph: LocalGraph
) -> Tensor:
    """``(n_edges, emb_size_edge)`` triplet messages of owned edges ``c -> a``."""
    x_ba = block.dense_ba(m)
    x_ba = block.scale_rbf(x_ba * block.mlp_rbf(bases.rbf3), ref=x_ba)
    x_ba = block.down_projection(x_ba)[graph.id3_ba]  # (T, emb_size_trip)
    x = bilinear(
        block.mlp_cbf, bases.cbf3, x_ba, graph.id3_ca, graph.id3_ragged_idx, kmax=graph.kmax
    )
    x = block.scale_cbf_sum(x, ref=x_ba)  # (n_edges, emb_size_bil_trip)
    x_ca = block.up_projection_ca(x)
    # The reverse edge a -> c may live on a peer: exchange the narrow bilinear output,
    # then up-project (a row-wise map, so projecting after the exchange is exact).
    x_ac = block.up_projection_ac(graph.plan.reverse_rows(x))
    return (x_ca + x_ac) * block.inv_sqrt_2


def interaction(
    block: InteractionBlockTripletsOnly, h: Tensor, m: Tensor, bases: Bases, graph: LocalGraph
) -> tuple[Tensor, Tensor]:
    """One interaction block on owned atoms ``h (n_atoms, A)`` and edges ``m (n_edges, D)``."""
    x = block.dense_ca(m) + triplet_interaction(block.trip_interaction, m, bases, graph)
    x = x * block.inv_sqrt_2
    for layer in block.layers_before_skip:
        x = layer(x)
    m = (m + x) * block.inv_sqrt_2
    for layer in block.layers_after_skip:
        m = layer(m)

    # Atom updates sum over edges into their target, which this rank owns: no communication.
    h = (h + block.atom_update(h, m, bases.rbf_h, graph.idx_t)) * block.inv_sqrt_2

    m2 = block.concat_layer(graph.plan.with_halo(h), m, graph.idx_s, graph.idx_t)
    for layer in block.residual_m:
        m2 = layer(m2)
    return h, (m + m2) * block.inv_sqrt_2
