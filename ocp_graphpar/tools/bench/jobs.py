"""A bench job: one record made by a function run on every rank of a world (or once, in
this process), and the record makers the suites share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ocp_graphpar.parallel.workers import WorkerWorld


@dataclass
class Job:
    """One record to make: ``fn(*args, **kwargs)`` on every rank of a world of ``size`` ranks
    (``size`` 0: once, in this process), then ``record(results, threads_per_rank)``."""

    size: int
    key: tuple
    fingerprint: str
    label: str
    fn: Callable
    args: tuple
    record: Callable[[Any, int], dict]
    kwargs: dict = field(default_factory=dict)

    def make(self, world: WorkerWorld | None, threads: int) -> dict:
        if world is None:
            return self.record(self.fn(*self.args, **self.kwargs), threads)
        return self.record(world.run(self.fn, *self.args, **self.kwargs), threads)


def first_rank_record(kind: str, workload: str, per_rank: list[dict], _threads: int) -> dict:
    return tagged(kind, workload, per_rank[0], _threads)


def tagged(kind: str, workload: str, result: dict, _threads: int) -> dict:
    return {"kind": kind, "workload": workload, **result}


def as_is(record: dict, _threads: int) -> dict:
    return record
