"""Model variants that exist only to be compared with, built on the same weights as ours."""

from __future__ import annotations

from torch import Tensor

from ocp_graphpar.models.dimenetpp_xl.graph import TripletGraph
from ocp_graphpar.models.dimenetpp_xl.model import DimeNetPPXL
from ocp_graphpar.parallel import gather_rows


def all_gathered_input_features(block, x: Tensor, rbf_held: Tensor, graph: TripletGraph) -> Tensor:
    """The simple design: gather every edge's ``hidden_channels``-wide features ``x`` from
    every rank, then compute the held input edges' down-projection locally."""
    act = block.act
    plan = graph.plan
    x = gather_rows(x, plan.stats.edges)[plan.edge_gather_index[graph.held_edges]]
    x_kj = act(block.lin_kj(x)) * block.lin_rbf2(block.lin_rbf1(rbf_held))
    return act(block.lin_down(x_kj))


class AllGatherDimeNetPPXL(DimeNetPPXL):
    """DimeNet++-XL gathering every edge's features each block instead of exchanging the
    halo of down-projected input-edge features: what the halo saves, in bytes."""

    input_features = staticmethod(all_gathered_input_features)
