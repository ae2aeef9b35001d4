"""Graph-parallel PaiNN (the worked example of ``docs/porting.md``)."""

from ocp_graphpar.models.painn_xl.model import PaiNNXL, painn_graph_size

__all__ = ["PaiNNXL", "painn_graph_size"]
