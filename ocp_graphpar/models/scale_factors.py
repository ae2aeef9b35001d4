"""fairchem scale factors under graph parallelism: statistics and fits over all ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from fairchem.core.modules.scaling.scale_factor import ScaleFactor
from torch import nn

from ocp_graphpar.parallel.groups import world_size


class GraphParallelScaleFactor(ScaleFactor):
    """A ``ScaleFactor`` whose fitting statistics are summed over every rank of the world.

    GP peers hold disjoint rows of one batch and DP groups hold different batches, so the sum
    over the world is the statistic of the global batch: a fit at any dp x gp layout gives what
    a single process gives on the concatenated batches, and every replica gets the same value.

    Outside fitting, the forward pass scales without reading the factor on the host (upstream
    asks ``fitted`` with an ``.item()`` per call, a stream stall on a GPU): an unfitted factor
    (0) scales by one, as upstream leaves its input unscaled.
    """

    def forward(self, x: torch.Tensor, *, ref: torch.Tensor | None = None) -> torch.Tensor:
        if self.index_fn is not None or self.stats is not None:
            return super().forward(x, ref=ref)
        return x * (self.scale_factor + (self.scale_factor == 0.0))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> None:
        if self.stats is None:
            return super()._observe(x, ref=ref)
        n, var_out = _global_variance(x)
        var_in = _global_variance(ref)[1] if ref is not None else 1.0
        self.stats["variance_out"] += var_out * n
        self.stats["variance_in"] += var_in * n
        self.stats["n_samples"] += n
        return None


def _global_variance(x: torch.Tensor) -> tuple[int, float]:
    """Rows over the world, and the feature-mean of the unbiased per-feature variance."""
    x = x.reshape(x.shape[0], -1).double()
    sums = torch.cat([x.new_tensor([x.shape[0]]), x.sum(0), (x * x).sum(0)])
    if world_size() > 1:
        dist.all_reduce(sums)
    n = int(sums[0])
    total, squares = sums[1 : 1 + x.shape[1]], sums[1 + x.shape[1] :]
    variance = (squares - total * total / n) / (n - 1)
    return n, float(variance.mean())


def make_scale_factors_graph_parallel(model: nn.Module) -> None:
    """Swap every ``ScaleFactor`` of ``model`` for the GP-aware subclass, in place
    (same parameters and names, so state dicts are unchanged)."""
    for module in model.modules():
        if type(module) is ScaleFactor:
            module.__class__ = GraphParallelScaleFactor


def fit_scale_factors(model: nn.Module, run_forward: Callable[[], object]) -> dict[str, float]:
    """Fit ``model``'s unfitted scale factors one at a time, in the order the forward pass
    calls them (as fairchem's ``fit.py`` does), each on one ``run_forward()``.

    A factor scales its block's output to unit variance given the factors before it, hence the
    order. ``run_forward`` decides on autograd (conservative forces need it). Statistics are
    summed over all ranks (see :class:`GraphParallelScaleFactor`), so every rank must call this
    together. Returns the fitted values by factor name.
    """
    unfitted = {
        module.name or name: module
        for name, module in model.named_modules()
        if isinstance(module, ScaleFactor) and not module.fitted
    }
    call_order: list[str] = []
    for name, module in unfitted.items():
        module.initialize_(index_fn=lambda name=name: call_order.append(name))
    run_forward()
    for module in unfitted.values():
        module.initialize_(index_fn=None)

    fitted = {}
    for name in dict.fromkeys(call_order):
        module = unfitted[name]
        with module.fit_context_():
            run_forward()
            _, _, fitted[name] = module.fit_()
    return fitted
