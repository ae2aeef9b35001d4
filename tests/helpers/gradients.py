"""A training step's gradients under DDP x GP and in a single process, for any model builder."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from ocp_graphpar.parallel import counting, dp_rank, dp_size


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


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def ddp_gradients(build: Callable, global_batches) -> dict:
    """Gradients of one step through DDP over dp x gp ranks; DP group d takes batch d."""
    torch.set_default_dtype(torch.float64)
    model = build()
    assert len(global_batches) == dp_size()
    ddp = DistributedDataParallel(model)  # kept alive: its hooks all-reduce in backward
    with counting() as stats:
        loss = losses(ddp, [global_batches[dp_rank()]])
        loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model), "comm": stats.as_dict()}


def reference_gradients(build: Callable, global_batches) -> dict:
    """The single-process gradient of the same step: the mean loss over the DP batches."""
    torch.set_default_dtype(torch.float64)
    model = build()
    loss = losses(model, global_batches)
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model)}
