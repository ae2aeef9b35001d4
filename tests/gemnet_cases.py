"""Cases run on every rank for the GemNet-XL tests (module-level so spawned ranks import them)."""

from __future__ import annotations

import torch
from fairchem.core.models.gemnet.gemnet import GemNetT

from ocp_graphpar.models import GemNetXL
from ocp_graphpar.parallel import counting, dp_rank, dp_size

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


def graph_parallel_model(seed: int = 0, **overrides) -> GemNetXL:
    upstream = upstream_model(seed, **overrides)
    model = GemNetXL(**{**TINY, **overrides}).double()
    model.load_state_dict(upstream.state_dict(), strict=True)
    return model


def predict(model, batch) -> dict:
    """Energies and forces (forces detached) of ``model`` on ``batch``."""
    torch.set_default_dtype(torch.float64)
    batch = batch.clone()
    out = model(batch)
    return {key: value.detach() for key, value in out.items()}


def predict_graph_parallel(batch, overrides: dict) -> dict:
    return predict(graph_parallel_model(**overrides), batch)


def losses(model, batches) -> torch.Tensor:
    """Mean over DP batches of energy MSE + 10 x force MSE against the batches' DFT labels."""
    total = 0
    for batch in batches:
        batch = batch.clone()
        out = model(batch)
        energy_loss = ((out["energy"].squeeze(-1) - batch.energy.double()) ** 2).mean()
        force_loss = ((out["forces"] - batch.forces.double()) ** 2).mean()
        total = total + energy_loss + 10 * force_loss
    return total / len(batches)


def ddp_gradients(global_batches, overrides: dict, checkpointing: bool = False) -> dict:
    """Train-step gradients through DDP over dp x gp ranks; each DP group takes its batch."""
    from torch.nn.parallel import DistributedDataParallel

    torch.set_default_dtype(torch.float64)
    model = graph_parallel_model(**overrides)
    model.activation_checkpointing = checkpointing
    ddp = DistributedDataParallel(model)
    assert len(global_batches) == dp_size()
    with counting() as stats:
        loss = losses(ddp, [global_batches[dp_rank()]])
        loss.backward()
    return {
        "loss": loss.detach(),
        "grads": {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        },
        "comm": stats.as_dict(),
    }


def reference_gradients(global_batches, overrides: dict) -> dict:
    torch.set_default_dtype(torch.float64)
    model = upstream_model(**overrides)
    loss = losses(model, global_batches)
    loss.backward()
    return {
        "loss": loss.detach(),
        "grads": {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        },
    }


def fit_scale_factors(batch) -> list[float]:
    """Fit every scale factor of a fresh GemNet-XL in module order, one at a time (as
    fairchem's fitting script does), and return the fitted values."""
    from fairchem.core.modules.scaling.scale_factor import ScaleFactor

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = GemNetXL(**TINY, direct_forces=True).double()
    values = []
    for factor in (m for m in model.modules() if isinstance(m, ScaleFactor)):
        with factor.fit_context_(), torch.no_grad():
            model(batch.clone())
            _, _, value = factor.fit_()
        values.append(value)
    return values
