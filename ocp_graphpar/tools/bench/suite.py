"""A benchmark suite (``configs/bench/*.yml``): workloads, the GP sizes they run at, and limits.

A workload is one model config on one batch of structures, measured for every contender at
every size it runs at. What it measures follows from its settings: a training step (default)
or a prediction (``inference: true``); model state sharded over a world (``memory:``); on an
accelerator, each contender alone at P = 1 (``device: cuda``). ``limits`` are the upper bounds
the suite holds its measurements to (see :mod:`.limits`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.measure.contenders import CONTENDERS
from ocp_graphpar.tools.bench.limits import check_limits

PLANS = "plans"  # `--only plans` re-runs the suite's memory plans
MEMORY_KEYS = {"world", "spawned"}


@dataclass
class Workload:
    name: str
    config: str
    family: str
    systems: list
    contenders: list[str]
    description: str = ""
    overrides: dict = field(default_factory=dict)
    limits: list[dict] = field(default_factory=list)
    repeats: int | None = None  # timed steps per run (default: the suite's)
    paired_timing: list[str] = field(default_factory=list)  # timed alternately at P = 1
    paired_rounds: int = 2  # alternating blocks per paired contender (2 timed steps each)
    tiny_overrides: dict = field(default_factory=dict)  # model widths under `bench --tiny`
    contender_sizes: dict = field(default_factory=dict)  # {contender: [P, ...]} (default: all)
    # model state over a world: {world: ranks, spawned: also measured on that many ranks}
    memory: dict = field(default_factory=dict)
    inference: bool = False  # runs are predictions, not training steps
    device: str | None = None  # an accelerator: each contender alone at P = 1 on it

    def model_config(self) -> dict:
        """The config's ``model`` section, run on the edges the batch carries."""
        from fairchem.core.common.utils import load_config

        config = dict(load_config(self.config)[0]["model"])
        config.pop("name")
        return {**config, "otf_graph": False, **self.overrides}

    def runs_at(self, size: int) -> list[str]:
        if self.device and size != 1:
            return []
        return [
            c
            for c in self.contenders
            if (size == 1 or CONTENDERS[c].graph_parallel)
            and size in self.contender_sizes.get(c, [size])
        ]


@dataclass
class Suite:
    workloads: list[Workload]
    sizes: list[int]
    repeats: int = 2
    plans: list[dict] = field(default_factory=list)  # ``ocp-graphpar plan`` arguments
    warmup: int = 0  # untimed steps before the counted one (device workloads)
    tiny: dict = field(default_factory=dict)  # `--tiny` besides widths: {repeats, systems}
    report: str = "benchmarks"  # the report's name: <out>/<report>.md, <out>/<report>/

    def select(self, names: list[str] | None) -> Suite:
        """The workloads named (and the memory plans if ``plans`` is named)."""
        if not names:
            return self
        unknown = set(names) - {w.name for w in self.workloads} - {PLANS}
        if unknown:
            known = ", ".join([w.name for w in self.workloads] + [PLANS])
            raise UserFacingError(f"no workload named {sorted(unknown)} (the suite has: {known})")
        chosen = [w for w in self.workloads if w.name in names]
        return replace(self, workloads=chosen, plans=self.plans if PLANS in names else [])

    def at_tiny_widths(self) -> Suite:
        """Every workload with its ``tiny_overrides`` applied (and its first ``tiny.systems``
        systems), and ``tiny.repeats`` timed steps: the same code at sizes a CPU test runs
        quickly."""
        count = self.tiny.get("systems")
        workloads = [
            replace(
                w,
                overrides={**w.overrides, **w.tiny_overrides},
                systems=w.systems[:count] if count else w.systems,
                description=f"{w.description}, at tiny widths (--tiny)"
                if w.tiny_overrides
                else w.description,
                repeats=self.tiny.get("repeats", w.repeats),
            )
            for w in self.workloads
        ]
        return replace(self, workloads=workloads, warmup=self.tiny.get("warmup", self.warmup))

    def on_device(self, device: str) -> Suite:
        """Every workload run on ``device`` (e.g. a GPU suite rehearsed on ``cpu``)."""
        return replace(self, workloads=[replace(w, device=device) for w in self.workloads])


def load_suite(path: str | os.PathLike) -> Suite:
    """A suite from YAML; a clear error for a missing file, an unknown contender, memory key or
    limit."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"benchmark suite {path} does not exist; pass --suite FILE.yml")
    spec = yaml.safe_load(path.read_text())
    try:
        workloads = [Workload(**entry) for entry in spec["workloads"]]
    except TypeError as error:
        raise UserFacingError(f"{path}: a workload has {error}") from None
    suite = Suite(
        workloads,
        sizes=list(spec.get("sizes", [1, 2, 4])),
        repeats=int(spec.get("repeats", 2)),
        plans=list(spec.get("plans", [])),
        warmup=int(spec.get("warmup", 0)),
        tiny=dict(spec.get("tiny", {})),
        report=str(spec.get("report", "benchmarks")),
    )
    for workload in workloads:
        _check_workload(workload, suite.sizes)
    return suite


def _check_workload(workload: Workload, sizes: list[int]) -> None:
    name = workload.name
    unknown = set(workload.contenders) - set(CONTENDERS)
    if unknown:
        raise UserFacingError(
            f"workload {name}: unknown contenders {sorted(unknown)}; "
            f"choose from {sorted(CONTENDERS)}"
        )
    unknown = set(workload.memory) - MEMORY_KEYS
    if unknown:
        raise UserFacingError(
            f"workload {name}: unknown memory keys {sorted(unknown)}; "
            f"choose from {sorted(MEMORY_KEYS)}"
        )
    world = int(workload.memory.get("world", 4))
    if workload.memory.get("spawned") and world not in sizes:
        raise UserFacingError(
            f"workload {name}: memory.spawned measures on the suite's world of {world} ranks, "
            f"but the suite's sizes are {sizes}"
        )
    check_limits(name, workload.limits, workload.contenders)
