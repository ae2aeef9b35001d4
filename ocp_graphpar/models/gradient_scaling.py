"""Make DDP's gradient average over dp x gp ranks equal the single-process gradient.

Under graph parallelism every GP peer computes the same loss, and each back-propagates only its
own share of the graph, so a parameter's gradient on a rank is a *partial sum*: the peers'
gradients add up to the full gradient of their common batch. DDP averages over all
``dp * gp`` ranks, which would divide that sum by ``gp`` once too often. Multiplying each
rank's contribution by ``gp`` restores it: ``mean_{dp,gp}(gp * partial) = mean_dp(full)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ocp_graphpar.parallel import gp_size


def _scale_by_gp_size(grad: Tensor) -> Tensor:
    size = gp_size()
    return grad if size == 1 else grad * size


def scale_gradients_for_ddp(model: nn.Module) -> None:
    """Register a hook on every trainable parameter that scales its gradient by the GP size
    (a no-op without graph parallelism)."""
    for param in model.parameters():
        if param.requires_grad:
            param.register_hook(_scale_by_gp_size)
