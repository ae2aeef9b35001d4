"""Per-GPU memory of inference against the GP size (``ocp-graphpar plan --inference``).

A prediction (fairchem's ``trainer.predict``, an ASE calculator) calls the model in eval mode
under ``torch.no_grad()``: every rank holds the parameters, replicated, and no gradients,
optimizer state or EMA. Its activations are the peak of one energy-and-forces call, traced by
:func:`.trace.trace_model` with ``inference`` and split over the ranks as a training step's
are. Activation checkpointing can only matter for ``-dE/dpos`` forces (the one pass of a
prediction that records a graph), so the plan traces both settings and shows the one the
config does not set only where it changes the estimate.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ocp_graphpar.measure.planner.estimate import (
    FLOAT32,
    GIB,
    GraphSize,
    activation_bytes,
    traced_config,
)

CHECKPOINTING_KEY = "model.activation_checkpointing"


@dataclass(frozen=True)
class InferenceRow:
    """One GP size under one checkpointing setting; bytes per GPU."""

    gp_size: int
    activation_checkpointing: bool
    parameters: float
    activations: float
    total: float
    fits: bool


def plan_inference(
    config_path: str | os.PathLike,
    graph: GraphSize,
    *,
    gpu_mem_gib: float = 32.0,
    reserve_gib: float = 2.0,
    batch_size: int | None = None,
    max_gp: int = 1024,
) -> dict:
    """The inference memory plan of ``config_path``'s model for structures of ``graph``'s size
    (plain data): rows at P = 1, 2, 4, ... up to the first P at which the config's setting
    fits (or ``max_gp``), and that P. ``batch_size`` structures per call (default one, as an
    ASE calculator)."""
    traced = traced_config(config_path, inference=True)
    model_config = traced.model_config
    configured = bool(model_config.get("activation_checkpointing", False))
    batch = batch_size or 1

    def activations(checkpointing: bool, gp: int) -> float:
        return activation_bytes(traced.traces[checkpointing], traced.widths, graph, batch, gp)

    # Equal at P = 1 means the same operators keep the same tensors: equal at every P.
    settings = [configured]
    if not math.isclose(activations(False, 1), activations(True, 1), rel_tol=1e-9):
        settings.append(not configured)
    parameters = traced.num_parameters * FLOAT32
    rows: list[InferenceRow] = []
    gp = 1
    while gp <= max_gp:
        for checkpointing in settings:
            held = activations(checkpointing, gp)
            total = parameters + held + reserve_gib * GIB
            rows.append(
                InferenceRow(gp, checkpointing, parameters, held, total, total <= gpu_mem_gib * GIB)
            )
        if rows[-len(settings)].fits:  # the config's setting
            break
        gp *= 2
    return {
        "mode": "inference",
        "config": str(config_path),
        "model": traced.config["model"]["name"],
        "parameters": traced.num_parameters,
        "graph": vars(graph),
        "batch_size": batch,
        "max_neighbors": model_config.get("max_neighbors"),
        "forces": _forces(model_config),
        "gpu_mem_gib": gpu_mem_gib,
        "reserve_gib": reserve_gib,
        "parameter_bytes": parameters,
        "activation_checkpointing": configured,
        "checkpointing_matters": len(settings) == 2,
        "rows": [vars(row) for row in rows],
        "recommended_gp": _smallest_fit(rows, configured),
        "recommended_gp_other": _smallest_fit(rows, not configured),
    }


def _forces(model_config: dict) -> str:
    if not model_config.get("regress_forces", True):
        return "none"
    return "direct" if model_config.get("direct_forces", False) else "-dE/dpos"


def _smallest_fit(rows: list[InferenceRow], checkpointing: bool) -> int | None:
    return min(
        (row.gp_size for row in rows if row.fits and row.activation_checkpointing == checkpointing),
        default=None,
    )
