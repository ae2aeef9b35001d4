"""Run a suite: every record it defines, each made on a world of spawned ranks.

Each GP size gets one world of gloo ranks, with the machine's cores split between them, and
every (workload, contender) pair runs on it in turn. A run on an accelerator, and the paired
timing, get a fresh process each, so every measurement starts from a fresh allocator. Records
go to a :class:`~.journal.Journal` as they are made, so an interrupted suite resumes.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from ocp_graphpar.atomic import fingerprint
from ocp_graphpar.parallel.workers import RankDied, RankFailed, WorkerWorld
from ocp_graphpar.tools.bench import records as rec
from ocp_graphpar.tools.bench.journal import Journal
from ocp_graphpar.tools.bench.suite import Suite, Workload
from ocp_graphpar.tools.bench.systems import load_batch

log = logging.getLogger(__name__)
WORLD_TIMEOUT_S = 7200.0


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
    record: Callable[[object, int], rec.Record]
    kwargs: dict = field(default_factory=dict)
    fresh: bool = False  # a world of its own, closed after the job

    def make(self, world: WorkerWorld | None, threads: int) -> rec.Record:
        if world is None:
            return self.record(self.fn(*self.args, **self.kwargs), threads)
        return self.record(world.run(self.fn, *self.args, **self.kwargs), threads)


def workload_batch(workload: Workload, config: dict):
    """The workload's structures with their graph at the model's cutoff and neighbour limit."""
    return load_batch(
        workload.systems,
        cutoff=float(config["cutoff"]),
        max_neighbors=int(config.get("max_neighbors", 50)),
    )


def run_suite(suite: Suite, journal: Journal | None = None) -> list[rec.Record]:
    """Every record of the suite, in the order the report reads them.

    Records the journal already holds for the same definitions are reused; a job whose world
    dies or raises (a rank killed, out of memory) becomes a :class:`~.records.Failed` record and
    the suite goes on with a fresh world.
    """
    journal = journal or Journal(None)
    prepared = [(w, w.model_config()) for w in suite.workloads]
    batches = {w.name: workload_batch(w, config) for w, config in prepared}
    records: list[rec.Record] = [_info(w, batches[w.name]) for w in suite.workloads]
    jobs = make_jobs(suite, prepared, batches)
    progress = tqdm(total=len(jobs), desc="bench", unit="run")
    pending = []
    for job in jobs:
        done = journal.get(job.key, job.fingerprint)
        if done is None:
            pending.append(job)
        else:
            records.append(rec.from_json(done))
            progress.update()
    for size, group in itertools.groupby(pending, key=lambda job: job.size):
        threads = max(1, (os.cpu_count() or 1) // (size or 1))
        world = None
        try:
            for job in group:
                progress.set_postfix_str(job.label)
                if size and world is None:
                    world = WorkerWorld(size, threads_per_rank=threads, timeout_s=WORLD_TIMEOUT_S)
                try:
                    record = job.make(world, threads)
                    journal.add(job.key, job.fingerprint, rec.to_json(record))
                except (RankDied, RankFailed, TimeoutError) as error:
                    # Not journaled: a resumed suite tries again. The next job gets a fresh
                    # world (ranks that did not fail may be waiting in a collective).
                    if world is not None:
                        world.close(force=True)
                    world, record = None, _failed(job.key, _reason(error))
                    log.warning("%s did not finish: %s", job.label, record.reason)
                if job.fresh and world is not None:
                    world.close()
                    world = None
                records.append(record)
                progress.update()
        finally:
            if world is not None:
                world.close()
    progress.close()
    return records


def _reason(error: Exception) -> str:
    """The last line of what went wrong (a worker's traceback ends with its exception)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _failed(key: tuple, reason: str) -> rec.Failed:
    kind, workload, *rest = key
    contender, size = rest if kind == "run" else (None, None)
    return rec.Failed(workload, kind, reason, contender, size)


def _info(workload: Workload, batch) -> rec.WorkloadInfo:
    spec = asdict(workload)
    return rec.WorkloadInfo(
        workload=workload.name,
        atoms=int(batch.natoms.sum()),
        edges=int(batch.edge_index.shape[1]),
        **{key: spec[key] for key in ("description", "config", "family", "systems")},
        **{key: spec[key] for key in ("overrides", "limits", "memory", "inference", "device")},
    )


def make_jobs(suite: Suite, prepared, batches) -> list[Job]:
    """The suite's records in the order they are made: the paired timings, then each world
    from P = 1 up (model state at P = 1), then the planner (no world)."""
    from ocp_graphpar.measure.state import rank_state_bytes, state_split
    from ocp_graphpar.measure.steps import (
        contender_state_bytes,
        measure_contender,
        paired_step_times,
    )
    from ocp_graphpar.tools.bench.planning import plan, plan_check

    jobs = []
    for w, config in prepared:
        if w.paired_timing and not w.device:
            args = (w.paired_timing, w.family, config, batches[w.name])
            record = partial(_as_record, rec.Paired, w.name)
            jobs.append(
                Job(
                    0,
                    ("paired", w.name),
                    _definition(w, suite, paired=True),
                    f"{w.name} paired timing",
                    paired_step_times,
                    args,
                    record,
                    {"rounds": w.paired_rounds},
                )
            )
    for size, (w, config) in itertools.product(suite.sizes, prepared):
        name, defined, world = w.name, _definition(w, suite), int(w.memory.get("world", 4))
        if size == 1 and w.memory:
            record = partial(_first_rank, rec.StateSplit, name)
            jobs.append(
                Job(
                    1,
                    ("state_split", name),
                    defined,
                    f"{name} model state, split",
                    state_split,
                    (w.family, config),
                    record,
                    {"world_size": world},
                )
            )
        elif size == 1 and not (w.inference or w.device):
            record = partial(_first_rank, rec.State, name)
            jobs.append(
                Job(
                    1,
                    ("state", name),
                    defined,
                    f"{name} model state",
                    contender_state_bytes,
                    ("ours", w.family, config),
                    record,
                )
            )
        if size == world and w.memory.get("spawned"):
            record = partial(_as_record, rec.StateWorld, name)
            jobs.append(
                Job(
                    world,
                    ("state_world", name),
                    defined,
                    f"{name} model state on {world}",
                    rank_state_bytes,
                    (w.family, config),
                    record,
                )
            )
        for contender in w.runs_at(size):
            options = {
                "repeats": suite.repeats if w.repeats is None else w.repeats,
                "inference": w.inference,
            }
            if w.device:
                options.update(device=w.device, warmup=suite.warmup, stalls=True)
            jobs.append(
                Job(
                    size,
                    ("run", name, contender, size),
                    defined,
                    f"P={size} {name} {contender}",
                    measure_contender,
                    (contender, w.family, config, batches[name]),
                    partial(_run, name, contender, size),
                    options,
                    fresh=bool(w.device),
                )
            )
    for w, config in prepared:
        if not w.device:
            jobs.append(
                Job(
                    0,
                    ("plan_check", w.name),
                    _definition(w, suite),
                    f"{w.name} planner check",
                    plan_check,
                    (w, config, batches[w.name]),
                    _as_is,
                    {"sizes": suite.sizes},
                )
            )
    for index, spec in enumerate(suite.plans):
        defined = fingerprint({"plan": spec, "config": Path(spec["config"]).read_text()})
        jobs.append(Job(0, ("plan", index), defined, f"plan {index}", plan, (spec,), _as_is))
    return jobs


def _as_record(cls, workload: str, result, _threads: int) -> rec.Record:
    fields = {"per_rank": result} if isinstance(result, list) else result
    return cls(workload=workload, **fields)


def _first_rank(cls, workload: str, per_rank: list[dict], _threads: int) -> rec.Record:
    return cls(workload=workload, **per_rank[0])


def _run(workload: str, contender: str, size: int, per_rank: list[dict], threads: int) -> rec.Run:
    return rec.Run(workload, contender, size, threads, per_rank)


def _as_is(record: rec.Record, _threads: int) -> rec.Record:
    return record


def _definition(workload: Workload, suite: Suite, paired: bool = False) -> str:
    """What a workload's records depend on: its definition (the paired-timing fields only for
    the paired record), its config file, the sizes and the default repeats."""
    spec = asdict(workload)
    for key in ("tiny_overrides", "description", "limits", "contenders", "contender_sizes"):
        spec.pop(key)  # tiny_overrides are applied to `overrides` when used
    if not paired:
        spec.pop("paired_timing")
        spec.pop("paired_rounds")
    return fingerprint(
        {
            "workload": spec,
            "config": Path(workload.config).read_text(),
            "sizes": suite.sizes,
            "repeats": suite.repeats,
            "warmup": suite.warmup,
        }
    )
