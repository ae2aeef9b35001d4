"""What every model's exactness tests compare: outputs of a forward pass, and their error."""

from __future__ import annotations

import torch


def predict(model, batch) -> dict:
    """Energies and forces (detached) of ``model`` on a copy of ``batch``, run with float64 as
    torch's default dtype (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = model(batch.clone())
    finally:
        torch.set_default_dtype(previous)
    return {key: value.detach() for key, value in out.items()}


def rel_err(actual, expected) -> float:
    """Largest absolute difference over the largest magnitude of ``expected``."""
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-30))
