"""Make DDP's gradient average over dp x gp ranks equal the single-process gradient.

Under graph parallelism every GP peer computes the same loss, and each back-propagates only its
own share of the graph, so a parameter's gradient on a rank is a *partial sum*: the peers'
gradients add up to the full gradient of their common batch. DDP averages over all
``dp * gp`` ranks, which would divide that sum by ``gp`` once too often. Multiplying each
rank's contribution by ``gp`` restores it: ``mean_{dp,gp}(gp * partial) = mean_dp(full)``.

Back-propagation is linear in the gradient it starts from, so scaling the gradient where it
enters the model (at its outputs) scales every parameter's gradient alike: one multiplication
per output instead of a hook on every parameter, and it works under any trainer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ocp_graphpar.parallel import gp_size


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: int) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def scale_gradient_for_ddp(output: Tensor) -> Tensor:
    """``output`` unchanged, with the gradient that flows back through it multiplied by the GP
    size (the identity without graph parallelism)."""
    size = gp_size()
    return output if size == 1 else _ScaleGradient.apply(output, size)
