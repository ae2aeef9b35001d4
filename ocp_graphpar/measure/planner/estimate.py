"""Per-GPU memory of a training run against the GP size and the memory settings, and the
cheapest setting that fits.

Model state (parameters, gradients, AdamW moments and the AMSGrad maximum, fairchem's EMA copy)
is replicated on every rank of a GP group unless ``optim.shard_optimizer_state`` partitions the
optimizer state and the EMA over all ranks of the world (ZeRO-1; parameters and gradients stay
replicated); activations are split, each rank holding its share of atoms, edges and triplets,
and ``model.activation_checkpointing`` keeps only each block's inputs, recomputing the rest in
the backward pass. Both come from the traced formulas of :mod:`.trace`, traced with and without
checkpointing whatever the config says, so one plan compares every setting.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.measure.model_state import ModelStateBytes, bytes_per_parameter
from ocp_graphpar.measure.planner.trace import WIDTHS, Trace, family_of, trace_model

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
class Setting:
    """A combination of the memory options, with the config keys that select it."""

    name: str
    checkpointing: bool
    sharded: bool

    @property
    def config_keys(self) -> dict[str, bool]:
        return {
            "model.activation_checkpointing": self.checkpointing,
            "optim.shard_optimizer_state": self.sharded,
        }


#: Cheapest in step time first: sharding adds a few collectives per optimizer step (gathering
#: the updated parameters), checkpointing recomputes every block's forward in the backward pass
#: (about a third more compute), and both pay both.
SETTINGS = (
    Setting("plain", checkpointing=False, sharded=False),
    Setting("sharded state", checkpointing=False, sharded=True),
    Setting("checkpointing", checkpointing=True, sharded=False),
    Setting("checkpointing + sharded state", checkpointing=True, sharded=True),
)


@dataclass(frozen=True)
class PlanRow:
    """One GP size under one setting; bytes per GPU."""

    gp_size: int
    setting: str
    activation_checkpointing: bool
    shard_optimizer_state: bool
    world: int  # ranks the optimizer state and EMA are sharded over (when they are)
    state: float
    activations: float
    total: float
    fits: bool


def model_state(num_parameters: int, optim: dict) -> ModelStateBytes:
    """fairchem's float32 training state, replicated (the rows' sharding divides it): the
    trainer's own per-parameter accounting, e.g. AdamW's two moments, AMSGrad's third buffer
    and the EMA copy with ``ema_decay``."""
    unsharded = {**optim, "shard_optimizer_state": False}
    per_parameter = bytes_per_parameter(optim=unsharded, world_size=1, element_size=FLOAT32)
    return ModelStateBytes(
        parameters=round(num_parameters * per_parameter.parameters),
        gradients=round(num_parameters * per_parameter.gradients),
        optimizer=round(num_parameters * per_parameter.optimizer),
        ema=round(num_parameters * per_parameter.ema),
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
    traces: dict[bool, Trace],
    widths: dict,
    state: ModelStateBytes,
    graph: GraphSize,
    *,
    batch: int,
    gpu_bytes: float,
    reserve_bytes: float,
    max_gp: int,
    world: int | None = None,
) -> list[PlanRow]:
    """Rows for every setting at P = 1, 2, 4, ... up to the first P at which the plain setting
    fits (or ``max_gp``): the larger GP sizes a cheaper setting would need stay in view beside
    the smallest one that fits. ``traces`` maps checkpointing off/on to its trace; the state is
    sharded over ``max(world, P)`` ranks (``None``: one GP group, P ranks)."""
    rows: list[PlanRow] = []
    gp = 1
    while gp <= max_gp:
        ranks = max(world or gp, gp)
        for setting in SETTINGS:
            held = state.sharded(world=ranks) if setting.sharded else state
            activations = activation_bytes(traces[setting.checkpointing], widths, graph, batch, gp)
            total = held.total + activations + reserve_bytes
            rows.append(
                PlanRow(
                    gp,
                    setting.name,
                    setting.checkpointing,
                    setting.sharded,
                    ranks,
                    held.total,
                    activations,
                    total,
                    total <= gpu_bytes,
                )
            )
        if rows[-len(SETTINGS)].fits:  # the plain setting
            break
        gp *= 2
    return rows


def recommend(rows: list[PlanRow]) -> PlanRow | None:
    """The cheapest row that fits: the fewest GPUs per GP group first (GPUs cost more than
    anything a setting costs), then the setting that costs least step time."""
    order = {setting.name: index for index, setting in enumerate(SETTINGS)}
    fitting = [row for row in rows if row.fits]
    return min(fitting, key=lambda row: (row.gp_size, order[row.setting]), default=None)


def load_model_config(path: Path) -> dict:
    """A fairchem config (``includes`` resolved) with a named model, or a clear error."""
    from fairchem.core.common.utils import load_config

    if not path.is_file():
        raise UserFacingError(f"config {path} does not exist; pass --config configs/s2ef/*.yml")
    config = load_config(str(path))[0]
    if "model" not in config or "name" not in config["model"]:
        raise UserFacingError(f"{path} has no model section with a name")
    return config


@dataclass(frozen=True)
class TracedConfig:
    """A config's model as a plan reads it: both checkpointing settings traced, whatever the
    config sets, so that one plan compares them."""

    config: dict  # the whole fairchem config
    model_config: dict  # its model section, without the name
    traces: dict[bool, Trace]  # activation checkpointing off and on
    widths: dict[str, int]
    num_parameters: int


def traced_config(config_path: str | os.PathLike, *, inference: bool = False) -> TracedConfig:
    """The config at ``config_path`` loaded and its model traced for a training step or, with
    ``inference``, for a prediction."""
    config = load_model_config(Path(config_path))
    model_config = dict(config["model"])
    family = family_of(str(model_config.pop("name")))
    traces = {
        checkpointing: cached_trace(
            family, {**model_config, "activation_checkpointing": checkpointing}, inference=inference
        )
        for checkpointing in (False, True)
    }
    widths = {name: model_config[name] for name in WIDTHS[family] if name in model_config}
    num_parameters = round(traces[False].parameters.evaluate(widths))
    return TracedConfig(config, model_config, traces, widths, num_parameters)


def plan_memory(
    config_path: str | os.PathLike,
    graph: GraphSize,
    *,
    gpu_mem_gib: float = 32.0,
    reserve_gib: float = 2.0,
    batch_size: int | None = None,
    max_gp: int = 1024,
    world: int | None = None,
) -> dict:
    """The memory plan of a training config for structures of ``graph``'s size (plain data):
    every setting at every GP size up to the first the plain setting fits, and the cheapest
    row that fits. ``world`` is the number of ranks in the run (data x graph parallel) that
    sharded state spreads over; ``None`` plans one GP group (the least sharding)."""
    if world is not None and world < 1:
        raise UserFacingError(f"--world must be positive (got {world})")
    traced = traced_config(config_path)
    config = traced.config
    optim = config.get("optim", {})
    state = model_state(traced.num_parameters, optim)
    batch = batch_size or int(optim.get("batch_size", 1))
    rows = plan_rows(
        traced.traces,
        traced.widths,
        state,
        graph,
        batch=batch,
        gpu_bytes=gpu_mem_gib * GIB,
        reserve_bytes=reserve_gib * GIB,
        max_gp=max_gp,
        world=world,
    )
    best = recommend(rows)
    return {
        "config": str(config_path),
        "model": config["model"]["name"],
        "parameters": traced.num_parameters,
        "graph": vars(graph),
        "batch_size": batch,
        "max_neighbors": traced.model_config.get("max_neighbors"),
        "gpu_mem_gib": gpu_mem_gib,
        "reserve_gib": reserve_gib,
        "state_bytes": vars(state),
        "world": world,
        "rows": [vars(row) for row in rows],
        "recommended_gp": None if best is None else best.gp_size,
        "recommended": _recommended(best),
    }


@functools.cache
def _cached_trace(family: str, model_config_json: str, _dtype: str, inference: bool) -> Trace:
    return trace_model(family, json.loads(model_config_json), inference=inference)


def cached_trace(family: str, model_config: dict, *, inference: bool = False) -> Trace:
    """The probe's trace, once per model config (and default dtype, which sets the probe's
    element size) in a process: each trace takes a training step (or a prediction)."""
    import torch

    key = json.dumps(model_config, sort_keys=True)
    return _cached_trace(family, key, str(torch.get_default_dtype()), inference)


def _recommended(row: PlanRow | None) -> dict | None:
    """The recommended row with the config keys that select its setting."""
    if row is None:
        return None
    setting = next(setting for setting in SETTINGS if setting.name == row.setting)
    return {**vars(row), "config_keys": setting.config_keys}
