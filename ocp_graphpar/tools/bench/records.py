"""What a benchmark suite records: one typed record per thing measured, stored as JSON.

A record is written as its fields plus ``kind``; :func:`from_json` reads it back. Per-rank
measurements stay the plain mappings :mod:`ocp_graphpar.measure` returns.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

STATE_PARTS = ("parameters", "gradients", "optimizer", "ema")


def _dig(value, keys: tuple[str, ...]):
    for key in keys:
        value = value[key]
    return value


def state_total(state: dict) -> int:
    return sum(state[part] for part in STATE_PARTS)


@dataclass
class WorkloadInfo:
    kind: ClassVar[str] = "workload"
    workload: str
    description: str
    config: str
    family: str
    systems: list
    atoms: int
    edges: int
    overrides: dict = field(default_factory=dict)
    limits: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    inference: bool = False
    device: str | None = None


@dataclass
class Run:
    """One contender at one GP size: every rank's measurement."""

    kind: ClassVar[str] = "run"
    workload: str
    contender: str
    size: int
    threads_per_rank: int
    per_rank: list[dict]

    def max(self, *keys: str) -> float:
        """The largest rank's value: what sets the pace and the memory a device must hold."""
        return max(_dig(rank, keys) for rank in self.per_rank)

    def total(self, *keys: str) -> float:
        return sum(_dig(rank, keys) for rank in self.per_rank)

    def timed(self, key: str = "step_s") -> float | None:
        """The slowest rank's median time, or ``None`` for a run only counted."""
        values = [rank[key] for rank in self.per_rank]
        return None if None in values else max(values)


@dataclass
class Paired:
    """Step times at P = 1 in alternating fresh processes, per contender."""

    kind: ClassVar[str] = "paired"
    workload: str
    step_s: dict[str, float]
    cpu_s: dict[str, float]
    step_s_all: dict[str, list[float]]
    cpu_s_all: dict[str, list[float]]
    ratio: dict[str, list[float]]


@dataclass
class State:
    """Model state of one rank after one optimizer step, replicated."""

    kind: ClassVar[str] = "state"
    workload: str
    parameters: int
    gradients: int
    optimizer: int
    ema: int


@dataclass
class StateSplit:
    """Model state unsharded, and each rank's share sharded over ``world`` ranks (the trainer's
    partition, computed in one process)."""

    kind: ClassVar[str] = "state_split"
    workload: str
    world: int
    unsharded: dict
    sharded: list[dict]

    def largest_share(self) -> int:
        return max(state_total(share) for share in self.sharded)


@dataclass
class StateWorld:
    """Model state unsharded and sharded, measured on each rank of a spawned world."""

    kind: ClassVar[str] = "state_world"
    workload: str
    per_rank: list[dict]


@dataclass
class PlanCheck:
    """The planner's activation estimates per GP size (``{"P": bytes}``) for a workload."""

    kind: ClassVar[str] = "plan_check"
    workload: str
    estimates: dict[str, float]
    estimates_ck: dict[str, float] | None = None  # ours with activation checkpointing
    config_widths: dict | None = None  # inference: at the config's own widths


@dataclass
class Plan:
    """An ``ocp-graphpar plan`` run, and the limits the suite sets on it."""

    kind: ClassVar[str] = "plan"
    plan: dict
    at_most: dict = field(default_factory=dict)
    workload: str = ""


@dataclass
class Failed:
    """A record whose world died (a rank killed, out of memory): not measured."""

    kind: ClassVar[str] = "failed"
    workload: str
    of: str
    reason: str
    contender: str | None = None
    size: int | None = None


Record = WorkloadInfo | Run | Paired | State | StateSplit | StateWorld | PlanCheck | Plan | Failed
KINDS = {cls.kind: cls for cls in Record.__args__}


def to_json(record: Record) -> dict:
    return {"kind": record.kind, **asdict(record)}


def from_json(data: dict) -> Record:
    cls = KINDS[data["kind"]]
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class WorkloadResults:
    """Every record of one workload."""

    info: WorkloadInfo
    runs: dict[tuple[str, int], Run] = field(default_factory=dict)
    paired: Paired | None = None
    state: State | None = None
    state_split: StateSplit | None = None
    state_world: StateWorld | None = None
    plan_check: PlanCheck | None = None
    failed: list[Failed] = field(default_factory=list)

    def upstream(self) -> str | None:
        """The single-process upstream contender measured at P = 1."""
        from ocp_graphpar.measure.contenders import CONTENDERS

        return next((c for c, p in self.runs if p == 1 and not CONTENDERS[c].graph_parallel), None)


def organise(records: list[Record]) -> tuple[dict[str, WorkloadResults], list[Plan]]:
    """The records by workload, in the order their workloads were defined, and the plans."""
    infos = {r.workload: r for r in records if isinstance(r, WorkloadInfo)}
    grouped: dict[str, WorkloadResults] = {}
    pending = defaultdict(list)
    for record in records:
        if isinstance(record, (WorkloadInfo, Plan)):
            continue
        pending[record.workload].append(record)
    for name, info in infos.items():
        results = grouped[name] = WorkloadResults(info)
        for record in pending[name]:
            if isinstance(record, Run):
                results.runs[record.contender, record.size] = record
            elif isinstance(record, Failed):
                results.failed.append(record)
            else:
                setattr(results, record.kind, record)
    return grouped, [r for r in records if isinstance(r, Plan)]
