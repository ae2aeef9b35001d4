"""Graph parallelism on one device: P gloo ranks sharing it, their training step in float64
against the single-process step of the same weights.

Each rank of a :class:`~ocp_graphpar.parallel.workers.WorkerWorld` runs :func:`gp_equality` on the
same device (``cuda`` puts every rank on the current GPU), so the runtime's collectives move
tensors of that device through gloo. Collectives the backend refuses on those tensors
(:func:`~ocp_graphpar.tools.bench.staging.refused_collectives`) are staged through host memory,
they alone; the report names them.

What is compared is what the trainer and the optimizer see: the energies and forces GP rank 0
returns (every rank returns them all), and each parameter's gradient as DDP averages it over
the GP ranks (every rank's ``param.grad`` summed, over P), against the single-process model's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ocp_graphpar.measure.contenders import build_contender
from ocp_graphpar.measure.steps import training_step
from ocp_graphpar.measure.wire import count_wire_bytes
from ocp_graphpar.parallel import gp_group, gp_rank, gp_size, recording_plans
from ocp_graphpar.parallel.groups import setup_groups, teardown_groups
from ocp_graphpar.tools.bench.device import use_device
from ocp_graphpar.tools.bench.staging import COLLECTIVES, refused_collectives, staged


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _single_process() -> Iterator[None]:
    """The block runs without graph parallelism; the GP groups are rebuilt after it (a
    collective: every rank enters the block)."""
    size, backend = gp_size(), dist.get_backend()
    teardown_groups()
    try:
        yield
    finally:
        setup_groups(size, backend=backend)


def nontrivial_model(family: str, model_config: dict, device: torch.device) -> torch.nn.Module:
    """Our model in float64 with the benchmark's weights (seed 0), except that trainable
    parameters initialised to zero (upstream DimeNet++'s output layers) are drawn from
    N(0, 1 / fan_in) by a fixed generator, so outputs and every gradient are non-trivial."""
    model = build_contender("ours", family, model_config, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and param.numel() and not param.any():
                fan_in = param.shape[-1] if param.dim() else 1
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype))
                param.mul_(fan_in**-0.5)
    return model.to(device).train()


def _float64(batch, device: torch.device):
    """The batch on ``device`` with float64 positions (cells stay float32, as fairchem stores
    them)."""
    batch = batch.clone()
    batch.pos = batch.pos.to(torch.float64)
    return batch.to(device)


def _step(family: str, model_config: dict, batch, device: torch.device) -> dict:
    model = nontrivial_model(family, model_config, device)
    out = training_step(model, batch)
    grads = {
        name: (param.grad if param.grad is not None else torch.zeros_like(param)).detach()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    return {"energy": out["energy"], "forces": out["forces"], "grads": grads}


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``expected``."""
    scale = expected.abs().max().clamp(min=torch.finfo(expected.dtype).tiny)
    return float((actual - expected).abs().max() / scale) if expected.numel() else 0.0


def gp_equality(
    family: str,
    model_config: dict,
    batch,
    *,
    device: str,
    force_staging: tuple[str, ...] = (),
) -> dict:
    """One float64 training step on this GP rank and, on GP rank 0, the single-process step
    of the same weights: the largest relative errors of energies, forces and parameter
    gradients, the collectives issued (by ``torch.distributed`` function) and those staged
    through host memory (refused by the backend on ``device``, or named in ``force_staging``).
    """
    device = use_device(device)
    refused = refused_collectives(device, names=COLLECTIVES, group=gp_group())
    stage = sorted(set(refused) | set(force_staging))
    with _default_dtype(torch.float64):
        batch = _float64(batch, device)
        with staged(stage) as step_staged, count_wire_bytes() as wire, recording_plans() as plans:
            ours = _step(family, model_config, batch, device)
        with staged(stage):  # DDP's average over the GP ranks of the scaled gradients
            for grad in ours["grads"].values():
                dist.all_reduce(grad, group=gp_group())
                grad /= gp_size()
        rank = gp_rank()
        result = {
            "rank": rank,
            "atoms": plans[0].stats.atoms[rank] if plans else None,
            "refused": refused,
            "staged": stage,
            "staged_calls": dict(step_staged),
            "collectives": {kind: wire.calls[kind] for kind in wire.calls},
        }
        with _single_process():
            if rank == 0:
                reference = _step(family, model_config, batch, device)
                grads = {
                    name: _rel_err(ours["grads"][name], grad)
                    for name, grad in reference["grads"].items()
                }
                worst = max(grads, key=grads.get)
                result["errors"] = {
                    "energy": _rel_err(ours["energy"], reference["energy"]),
                    "forces": _rel_err(ours["forces"], reference["forces"]),
                    "gradients": grads[worst],
                    "worst_parameter": worst,
                    "parameters": len(grads),
                }
    return result
