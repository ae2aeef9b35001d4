"""Per-GPU memory of inference against the GP size (``ocp-graphpar plan --inference``).

A prediction (fairchem's ``trainer.predict``, an ASE calculator) calls the model in eval mode
under ``torch.no_grad()``: every rank holds the parameters, replicated, and no gradients,
optimizer state or EMA. Its activations are the peak of one energy-and-forces call, traced by
:func:`~ocp_graphpar.measure.planner.trace.trace_model` with ``inference`` and split over the ranks
as a training step's are. Activation checkpointing can only matter for ``-dE/dpos`` forces (the
one pass of a prediction that records a graph), so the plan traces both settings and shows the
one the config does not set only where it changes the estimate.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ocp_graphpar.measure.planner.estimate import (
    FLOAT32,
    GIB,
    GraphSize,
    activation_bytes,
    cached_trace,
    load_model_config,
)
from ocp_graphpar.measure.planner.trace import WIDTHS, family_of

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
    config = load_model_config(Path(config_path))
    model_config = dict(config["model"])
    family = family_of(str(model_config.pop("name")))
    configured = bool(model_config.get("activation_checkpointing", False))
    traces = {
        checkpointing: cached_trace(
            family, {**model_config, "activation_checkpointing": checkpointing}, inference=True
        )
        for checkpointing in (False, True)
    }
    widths = {name: model_config[name] for name in WIDTHS[family] if name in model_config}
    num_parameters = round(traces[False].parameters.evaluate(widths))
    batch = batch_size or 1

    def activations(checkpointing: bool, gp: int) -> float:
        return activation_bytes(traces[checkpointing], widths, graph, batch, gp)

    # Equal at P = 1 means the same operators keep the same tensors: equal at every P.
    settings = [configured]
    if not math.isclose(activations(False, 1), activations(True, 1), rel_tol=1e-9):
        settings.append(not configured)
    parameters = num_parameters * FLOAT32
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
        "model": config["model"]["name"],
        "parameters": num_parameters,
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


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f} GiB"


def format_inference_plan(report: dict, triplets_given: bool = True) -> str:
    """The inference plan as text with a markdown table (also used in docs/benchmarks.md)."""
    graph = GraphSize(**report["graph"])
    configured = report["activation_checkpointing"]
    forces = {
        "direct": "forces from the model's force head",
        "-dE/dpos": "forces -dE/dpos (the model records a graph for that pass only)",
        "none": "no forces",
    }[report["forces"]]
    if report["checkpointing_matters"]:
        checkpointing = "the other setting is shown beside it"
    else:
        checkpointing = "turning it " + ("off" if configured else "on") + " changes nothing here"
    lines = [
        f"{report['model']} from {report['config']}: {report['parameters'] / 1e6:,.1f}M "
        "parameters",
        f"graph per structure: {graph.atoms:,} atoms, {graph.edges:,} edges, "
        f"{graph.triplets:,} triplets, longest triplet list {graph.kmax}"
        + ("" if triplets_given else " (triplets from the mean in-degree; pass --triplets)"),
        f"inference: {report['batch_size']} structure{'s' if report['batch_size'] > 1 else ''} per "
        "call (--batch-size), energy and "
        f"{forces}, under torch.no_grad() in eval mode; per GPU: parameters "
        f"{_gib(report['parameter_bytes'])}, replicated (no gradients, optimizer state or EMA); "
        f"reserve {report['reserve_gib']:.1f} GiB (CUDA context, NCCL buffers)",
        f"activation checkpointing: {'on' if configured else 'off'} in the config "
        f"({CHECKPOINTING_KEY}); {checkpointing}",
        "",
        "| GP size | setting | parameters per GPU | activations per GPU | total per GPU "
        f"| fits {report['gpu_mem_gib']:g} GiB |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in map(lambda r: InferenceRow(**r), report["rows"]):
        setting = "checkpointing" if row.activation_checkpointing else "plain"
        if row.activation_checkpointing == configured:
            setting += " (config)"
        lines.append(
            f"| {row.gp_size} | {setting} | {_gib(row.parameters)} "
            f"| {_gib(row.activations)} | {_gib(row.total)} "
            f"| {'yes' if row.fits else 'no'} |"
        )
    lines += ["", _advice(report)]
    return "\n".join(lines)


def _advice(report: dict) -> str:
    gp, other = report["recommended_gp"], report["recommended_gp_other"]
    configured = report["activation_checkpointing"]
    if gp is None:
        largest = report["rows"][-1]["gp_size"]
        if report["parameter_bytes"] + report["reserve_gib"] * GIB > report["gpu_mem_gib"] * GIB:
            return (
                "does not fit at any GP size: the parameters alone exceed the GPU, and "
                "graph parallelism replicates them."
            )
        advice = f"does not fit up to --max-gp {largest} as configured"
    else:
        advice = f"smallest GP size that fits: {_gpus(gp)} per structure, as configured"
    if other is not None and (gp is None or other < gp):
        advice += f"; with {CHECKPOINTING_KEY}: {not configured} it fits on {_gpus(other)}"
    return advice + "."


def _gpus(count: int) -> str:
    return f"{count} GPU" + ("s" if count > 1 else "")
