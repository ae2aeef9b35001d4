"""Graph-parallel models, registered in fairchem's registry when imported.

Each mixes :class:`~ocp_graphpar.models.base.GraphParallelModel` into the upstream model it
extends; tooling finds them through :mod:`ocp_graphpar.models.catalog`.
"""

from ocp_graphpar.models.dimenetpp_xl.model import DimeNetPPXL
from ocp_graphpar.models.gemnet_xl.model import GemNetXL
from ocp_graphpar.models.painn_xl.model import PaiNNXL

__all__ = ["DimeNetPPXL", "GemNetXL", "PaiNNXL"]
