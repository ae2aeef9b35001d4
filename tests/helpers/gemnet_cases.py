"""Cases run on every rank for the GemNet-XL tests (module-level so spawned ranks import them)."""

from __future__ import annotations

import torch
from fairchem.core.models.gemnet.gemnet import GemNetT

from helpers.comparison import predict
from ocp_graphpar.models import GemNetXL

TINY = dict(
    num_spherical=3,
    num_radial=4,
    num_blocks=2,
    emb_size_atom=8,
    emb_size_edge=12,
    emb_size_trip=6,
    emb_size_rbf=4,
    emb_size_cbf=4,
    emb_size_bil_trip=6,
    num_before_skip=1,
    num_after_skip=1,
    num_concat=1,
    num_atom=1,
    cutoff=6.0,
    max_neighbors=50,
)


def upstream_model(seed: int = 0, **overrides) -> GemNetT:
    """Upstream GemNet-T in float64 with fitted (non-trivial) scale factors."""
    torch.set_default_dtype(torch.float64)  # bases' constant buffers are made in this dtype
    torch.manual_seed(seed)
    model = GemNetT(**{**TINY, **overrides}).double()
    from fairchem.core.modules.scaling.scale_factor import ScaleFactor

    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, ScaleFactor):
            module.set_(float(0.5 + torch.rand((), generator=generator, dtype=torch.float64)))
    return model


def graph_parallel_model(seed: int = 0, options: dict | None = None, **overrides) -> GemNetXL:
    """GemNet-XL with upstream's weights; ``options`` are GemNet-XL's own arguments."""
    upstream = upstream_model(seed, **overrides)
    model = GemNetXL(**{**TINY, **overrides}, **(options or {})).double()
    model.load_state_dict(upstream.state_dict(), strict=True)
    return model


def predict_graph_parallel(batch, overrides: dict) -> dict:
    return predict(graph_parallel_model(**overrides), batch)


def fit_scale_factors(batch) -> list[float]:
    """Fit every scale factor of a fresh GemNet-XL in call order, one at a time (as
    fairchem's fitting script does), and return the fitted values."""
    from ocp_graphpar.models.scale_factors import fit_scale_factors as fit

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = GemNetXL(**TINY, direct_forces=True).double()
    return list(fit(model, lambda: model(batch.clone())).values())


def forward_report(batch, overrides: dict) -> dict:
    """One forward pass; the runtime's record of its partition and collectives."""
    from ocp_graphpar.parallel import counting, recording_plans

    torch.set_default_dtype(torch.float64)
    model = graph_parallel_model(**overrides)
    with counting() as comm, recording_plans() as plans:
        model(batch.clone())
    return {"partition": plans[-1].stats, "comm": comm.as_dict()}
