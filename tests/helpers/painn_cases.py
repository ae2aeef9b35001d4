"""Cases run on every rank for the PaiNN-XL tests (module-level so spawned ranks import them)."""

from __future__ import annotations

import torch
from fairchem.core.models.painn.painn import PaiNN

from helpers.comparison import predict
from ocp_graphpar.models import PaiNNXL

TINY = dict(
    hidden_channels=8,
    num_layers=2,
    num_rbf=6,
    cutoff=6.0,
    max_neighbors=50,
    otf_graph=False,
)


def upstream_model(seed: int = 0, **overrides) -> PaiNN:
    """Upstream PaiNN in float64 with non-trivial scale factors and output layers."""
    from fairchem.core.modules.scaling.scale_factor import ScaleFactor

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    model = PaiNN(**{**TINY, **overrides}).double()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, ScaleFactor):
            module.set_(float(0.5 + torch.rand((), generator=generator, dtype=torch.float64)))
    with torch.no_grad():  # upstream zero-initialises biases; make every term count
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def graph_parallel_model(seed: int = 0, options: dict | None = None, **overrides) -> PaiNNXL:
    """PaiNN-XL with upstream's weights; ``options`` are PaiNN-XL's own arguments."""
    upstream = upstream_model(seed, **overrides)
    model = PaiNNXL(**{**TINY, **overrides}, **(options or {})).double()
    model.load_state_dict(upstream.state_dict(), strict=True)
    return model


def predict_graph_parallel(batch, overrides: dict) -> dict:
    """Energies and forces on this rank, with the collectives of the forward pass and the
    partition statistics."""
    from ocp_graphpar.parallel import counting, recording_plans

    model = graph_parallel_model(**overrides)
    with counting() as comm, recording_plans() as plans:
        out = predict(model, batch)
    return {**out, "comm": comm.as_dict(), "partition": plans[-1].stats}


def step_flops(batch, overrides: dict) -> int:
    """Matrix-multiply FLOPs of one training step (forward, loss, backward) on this rank."""
    from torch.utils.flop_counter import FlopCounterMode

    from helpers.gradients import losses

    model = graph_parallel_model(**overrides)
    with FlopCounterMode(display=False) as flops:
        losses(model, [batch]).backward()
    return flops.get_total_flops()
