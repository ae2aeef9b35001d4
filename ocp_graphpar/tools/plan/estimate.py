"""Per-GPU memory of a training run against the GP size, and the smallest GP size that fits.

Model state (parameters, gradients, AdamW moments and the AMSGrad maximum, fairchem's EMA copy)
is replicated on every rank of a GP group; activations are split, each rank holding its share
of atoms, edges and triplets. Both come from the traced formulas of :mod:`.trace`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.plan.trace import WIDTHS, Trace, family_of, trace_model

GIB = 2**30
FLOAT32 = 4


@dataclass(frozen=True)
class GraphSize:
    """One structure's graph: atoms, edges, triplets and the longest triplet list of an edge."""

    atoms: int
    edges: int
    triplets: int
    kmax: int

    @classmethod
    def from_counts(
        cls, atoms: int, edges: int, triplets: int | None = None, kmax: int | None = None
    ) -> GraphSize:
        """Triplets and kmax from the mean in-degree ``d = edges / atoms`` unless given: every
        edge into an atom pairs with the other ``d - 1`` edges into it."""
        if atoms <= 0 or edges < 0:
            raise UserFacingError(
                f"--atoms must be positive and --edges non-negative (got {atoms}, {edges})"
            )
        degree = edges / atoms
        if triplets is None:
            triplets = round(edges * max(degree - 1.0, 0.0))
        if kmax is None:
            kmax = max(math.ceil(degree), 1)
        return cls(atoms, edges, triplets, kmax)


@dataclass(frozen=True)
class ModelState:
    """Bytes per rank that do not depend on P."""

    parameters: int
    gradients: int
    optimizer: int
    ema: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.ema


@dataclass(frozen=True)
class PlanRow:
    gp_size: int
    activations: float
    total: float
    fits: bool


def model_state(num_parameters: int, optim: dict) -> ModelState:
    """fairchem's float32 training state: AdamW keeps two moments, AMSGrad a third buffer,
    and ``ema_decay`` a shadow copy of the parameters."""
    optimizer_name = str(optim.get("optimizer", "AdamW")).lower()
    amsgrad = bool(optim.get("optimizer_params", {}).get("amsgrad", False))
    moments = {"adamw": 2, "adam": 2, "sgd": 0}.get(optimizer_name, 2) + int(amsgrad)
    param_bytes = num_parameters * FLOAT32
    return ModelState(
        parameters=param_bytes,
        gradients=param_bytes,
        optimizer=moments * param_bytes,
        ema=param_bytes if optim.get("ema_decay") else 0,
    )


def activation_bytes(trace: Trace, widths: dict, graph: GraphSize, batch: int, gp: int) -> float:
    """Peak activation bytes on one of ``gp`` ranks for a batch of ``batch`` such graphs."""
    values = {
        **widths,
        "atoms": batch * graph.atoms / gp,
        "edges": batch * graph.edges / gp,
        "triplets": batch * graph.triplets / gp,
        "kmax": graph.kmax,
    }
    return trace.activations.evaluate(values)


def plan_rows(
    trace: Trace,
    widths: dict,
    state: ModelState,
    graph: GraphSize,
    batch: int,
    gpu_bytes: float,
    reserve_bytes: float,
    max_gp: int,
) -> list[PlanRow]:
    """Rows for P = 1, 2, 4, ... up to the first that fits (or ``max_gp``)."""
    rows = []
    gp = 1
    while gp <= max_gp:
        activations = activation_bytes(trace, widths, graph, batch, gp)
        total = state.total + activations + reserve_bytes
        rows.append(PlanRow(gp, activations, total, total <= gpu_bytes))
        if rows[-1].fits:
            break
        gp *= 2
    return rows


def load_model_config(path: Path) -> dict:
    """A fairchem config (``includes`` resolved) with a named model, or a clear error."""
    from fairchem.core.common.utils import load_config

    if not path.is_file():
        raise UserFacingError(f"config {path} does not exist; pass --config configs/s2ef/*.yml")
    config = load_config(str(path))[0]
    if "model" not in config or "name" not in config["model"]:
        raise UserFacingError(f"{path} has no model section with a name")
    return config


def plan_memory(
    config_path: str | os.PathLike,
    graph: GraphSize,
    gpu_mem_gib: float = 32.0,
    reserve_gib: float = 2.0,
    batch_size: int | None = None,
    max_gp: int = 1024,
) -> dict:
    """The memory plan of a training config for structures of ``graph``'s size (plain data)."""
    config = load_model_config(Path(config_path))
    model_config = dict(config["model"])
    family = family_of(str(model_config.pop("name")))
    trace = trace_model(family, model_config)
    widths = {name: model_config[name] for name in WIDTHS[family] if name in model_config}
    num_parameters = round(trace.parameters.evaluate(widths))
    optim = config.get("optim", {})
    state = model_state(num_parameters, optim)
    batch = batch_size or int(optim.get("batch_size", 1))
    rows = plan_rows(
        trace, widths, state, graph, batch, gpu_mem_gib * GIB, reserve_gib * GIB, max_gp
    )
    return {
        "config": str(config_path),
        "model": config["model"]["name"],
        "parameters": num_parameters,
        "graph": vars(graph),
        "batch_size": batch,
        "max_neighbors": model_config.get("max_neighbors"),
        "gpu_mem_gib": gpu_mem_gib,
        "reserve_gib": reserve_gib,
        "state_bytes": vars(state),
        "rows": [vars(row) for row in rows],
        "recommended_gp": next((row.gp_size for row in rows if row.fits), None),
    }
