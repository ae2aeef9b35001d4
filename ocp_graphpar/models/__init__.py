"""Graph-parallel models, registered in fairchem's registry when imported."""

from ocp_graphpar.models.dimenetpp_xl.model import DimeNetPPXL
from ocp_graphpar.models.gemnet_xl.model import GemNetXL

__all__ = ["DimeNetPPXL", "GemNetXL"]
