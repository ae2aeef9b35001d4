"""GemNet scale factors under graph parallelism: legacy key names, and fits over the GP group."""

from __future__ import annotations

import logging
import re

import torch
from fairchem.core.modules.scaling.compat import _load_scale_dict
from fairchem.core.modules.scaling.scale_factor import ScaleFactor
from torch import nn

from ocp_graphpar.parallel import gp_size, reduce_partial

# Scale files written before fairchem renamed the atom-update scale factors (e.g. the shipped
# GemNet-XL file) name them after their interaction block.
_LEGACY_ATOM_UPDATE = re.compile(r"^IntBlock_(\d+)_sum$")


def load_scale_dict(scale_file) -> dict | None:
    """Read a scale file (``.json``/``.pt`` path or dict), renaming legacy ``IntBlock_*_sum``
    keys to ``AtomUpdate_*_sum`` with a warning."""
    scales = _load_scale_dict(scale_file)
    if not scales:
        return scales
    renamed = {}
    for key in scales:
        match = _LEGACY_ATOM_UPDATE.match(key)
        if match and f"AtomUpdate_{match.group(1)}_sum" not in scales:
            renamed[key] = f"AtomUpdate_{match.group(1)}_sum"
    if renamed:
        logging.warning(
            "scale file uses legacy names %s; loading them as %s",
            sorted(renamed),
            [renamed[k] for k in sorted(renamed)],
        )
    return {renamed.get(key, key): value for key, value in scales.items()}


class GraphParallelScaleFactor(ScaleFactor):
    """A ``ScaleFactor`` whose fitting statistics are summed over the GP group, so a fit at
    any GP size sees every row of the batch, as a single process does."""

    @torch.no_grad()
    def _observe(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> None:
        if self.stats is None or gp_size() == 1:
            return super()._observe(x, ref=ref)
        n, var_out = _global_variance(x)
        var_in = _global_variance(ref)[1] if ref is not None else 1.0
        self.stats["variance_out"] += var_out * n
        self.stats["variance_in"] += var_in * n
        self.stats["n_samples"] += n
        return None


def _global_variance(x: torch.Tensor) -> tuple[int, float]:
    """Rows over the GP group, and the feature-mean of the unbiased per-feature variance."""
    x = x.reshape(x.shape[0], -1).double()
    sums = torch.cat([x.new_tensor([x.shape[0]]), x.sum(0), (x * x).sum(0)])
    sums = reduce_partial(sums)
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
