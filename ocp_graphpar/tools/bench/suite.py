"""Run a benchmark suite (``configs/bench/*.yml``): every workload, contender and GP size.

Each GP size gets one world of spawned gloo ranks, with the machine's cores split between
them; every (workload, contender) pair then runs on it in turn. Results are plain data (one
dict per run, per-rank lists inside), kept in a JSON file that the report renders.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import yaml
from tqdm import tqdm

from ocp_graphpar.atomic import fingerprint
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.measure.contenders import CONTENDERS
from ocp_graphpar.parallel.workers import RankDied, WorkerWorld
from ocp_graphpar.tools.bench.jobs import Job, as_is, first_rank_record, tagged
from ocp_graphpar.tools.bench.journal import Journal
from ocp_graphpar.tools.bench.memory_suite import check_memory_spec

log = logging.getLogger(__name__)

PLANS = "plans"  # `--only plans` re-runs the suite's memory plans


@dataclass
class Workload:
    name: str
    config: str
    family: str
    systems: list[str]
    contenders: list[str]
    description: str = ""
    floors: bool = False
    overrides: dict = field(default_factory=dict)
    repeats: int | None = None  # timed steps per run (default: the suite's)
    paired_timing: list[str] = field(default_factory=list)  # timed alternately at P = 1
    paired_rounds: int = 2  # alternating blocks per paired contender (2 timed steps each)
    tiny_overrides: dict = field(default_factory=dict)  # model widths under `bench --tiny`
    contender_sizes: dict = field(default_factory=dict)  # {contender: [P, ...]} (default: all)
    memory: dict = field(default_factory=dict)  # issue #19's state records (memory_suite.py)
    inference: bool = False  # runs are predictions, not training steps (inference.py)

    def model_config(self) -> dict:
        """The config's ``model`` section, run on the edges the batch carries."""
        from fairchem.core.common.utils import load_config

        config = dict(load_config(self.config)[0]["model"])
        config.pop("name")
        return {**config, "otf_graph": False, **self.overrides}

    def runs_at(self, size: int) -> list[str]:
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
    # A device suite (`device:` set) measures each contender at P = 1 on that device and runs
    # `gp_check` (see tools/bench/device_suite.py); `timing` is its {warmup, steps}.
    device: str | None = None
    timing: dict = field(default_factory=dict)
    gp_check: dict | None = None
    tiny: dict = field(default_factory=dict)  # `--tiny` besides widths: {timing, systems}

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
        systems), and the ``tiny`` timing: the same code at sizes a CPU test runs quickly."""
        count = self.tiny.get("systems")
        workloads = [
            replace(
                w,
                overrides={**w.overrides, **w.tiny_overrides},
                systems=w.systems[:count] if count else w.systems,
                description=f"{w.description}, at tiny widths (--tiny)"
                if w.tiny_overrides
                else w.description,
            )
            for w in self.workloads
        ]
        return replace(
            self, workloads=workloads, timing={**self.timing, **self.tiny.get("timing", {})}
        )


def load_suite(path: str | os.PathLike) -> Suite:
    """A suite from YAML; names a missing file or unknown contender in the error."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"benchmark suite {path} does not exist; pass --suite FILE.yml")
    spec = yaml.safe_load(path.read_text())
    workloads = [Workload(**entry) for entry in spec["workloads"]]
    sizes = list(spec.get("sizes", [1, 2, 4]))
    for workload in workloads:
        unknown = set(workload.contenders) - set(CONTENDERS)
        if unknown:
            raise UserFacingError(
                f"workload {workload.name}: unknown contenders {sorted(unknown)}; "
                f"choose from {sorted(CONTENDERS)}"
            )
        check_memory_spec(workload.name, workload.memory, sizes)
    gp_check = spec.get("gp_check")
    if gp_check:
        unknown = set(gp_check.get("workloads", [])) - {w.name for w in workloads}
        if unknown:
            raise UserFacingError(f"gp_check names unknown workloads {sorted(unknown)}")
    return Suite(
        workloads,
        sizes,
        int(spec.get("repeats", 2)),
        list(spec.get("plans", [])),
        device=spec.get("device"),
        timing=dict(spec.get("timing", {})),
        gp_check=gp_check,
        tiny=dict(spec.get("tiny", {})),
    )


def load_batch(systems: list[str], cutoff: float, max_neighbors: int):
    """Collate the listed structures with their radius graph.

    ``path`` is frame 0 of an ASE-readable file, ``path@K`` frame K; a folder ``dir@K`` is
    item K of an LMDB dataset written by ``ocp-graphpar data`` (or any fairchem S2EF LMDB); a
    mapping is the recipe of a built slab (:func:`~.inference.slab_structure`).
    """
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(
        max_neigh=max_neighbors, radius=cutoff, r_energy=True, r_forces=True, r_edges=True
    )
    return data_list_collater([_structure(s, a2g) for s in systems], otf_graph=False)


def _structure(spec: str | dict, a2g):
    from ocp_graphpar.tools.data.reading import read_frames

    if isinstance(spec, dict):
        from ocp_graphpar.tools.bench.inference import slab_structure

        return a2g.convert(slab_structure(**spec))

    path, _, index = spec.partition("@")
    if not Path(path).exists():
        raise UserFacingError(
            f"benchmark structure {path} does not exist; the default suite reads "
            "../shared/data/oc20_mini (run from the repository root) or edit the suite's systems"
        )
    index = int(index or 0)
    if Path(path).is_dir():
        from fairchem.core.datasets import LmdbDataset

        item = LmdbDataset({"src": path})[index]
        return a2g.convert(_atoms_of(item))
    return a2g.convert(read_frames(path)[index])


def _atoms_of(item):
    """The ASE structure of a stored fairchem item (to rebuild its graph at the model's cutoff)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    atoms = Atoms(
        numbers=item.atomic_numbers.long().numpy(),
        positions=item.pos.numpy(),
        cell=item.cell.reshape(3, 3).numpy(),
        pbc=True,
        tags=item.tags.numpy(),
        constraint=FixAtoms(mask=item.fixed.bool().numpy()),
    )
    atoms.calc = SinglePointCalculator(atoms, energy=float(item.energy), forces=item.forces.numpy())
    return atoms


def run_suite(suite: Suite, journal: Journal | None = None) -> list[dict]:
    """Every record of the suite: one per workload, model state, paired timing, (size,
    workload, contender) run, planner check and plan.

    Each record is added to ``journal`` as it is made, and records the journal already holds
    for the same definitions are reused, so an interrupted suite picks up where it stopped.
    """
    journal = journal or Journal(None)
    prepared = [(w, w.model_config()) for w in suite.workloads]
    batches = {
        w.name: load_batch(w.systems, float(cfg["cutoff"]), int(cfg.get("max_neighbors", 50)))
        for w, cfg in prepared
    }
    jobs = _jobs(suite, prepared, batches)
    records = [workload_record(w, batches[w.name]) for w in suite.workloads]
    progress = tqdm(total=len(jobs), desc="bench", unit="run")
    pending = []
    for job in jobs:
        done = journal.get(job.key, job.fingerprint)
        if done is None:
            pending.append(job)
        else:
            records.append(done)
            progress.update()
    for size, group in itertools.groupby(pending, key=lambda job: job.size):
        threads = max(1, (os.cpu_count() or 1) // (size or 1))
        world = None
        try:
            for job in group:
                progress.set_postfix_str(job.label)
                if size and world is None:
                    world = WorkerWorld(size, threads_per_rank=threads, timeout_s=7200.0)
                try:
                    record = journal.add(job.key, job.fingerprint, job.make(world, threads))
                except RankDied as died:
                    # Not journaled: a resumed suite tries again. The dead world is stopped;
                    # the next job starts a fresh one.
                    world, record = None, _failed_record(job.key, str(died))
                    log.warning("%s did not finish: %s", job.label, died)
                records.append(record)
                progress.update()
                if record["kind"] == "run":
                    log.info("%s: %s", job.label, _brief(record))
        finally:
            if world is not None:
                world.close()
    progress.close()
    return records


def _failed_record(key: tuple, reason: str) -> dict:
    """What the report says of a job whose world died (a rank killed, out of memory)."""
    kind, workload, *rest = key
    record = {"kind": "failed", "of": kind, "workload": workload, "reason": reason}
    if kind == "run":
        record["contender"], record["size"] = rest
    return record


def _jobs(suite: Suite, prepared, batches) -> list[Job]:
    """The suite's records in the order they are made: the paired timings (each contender in
    a process of its own, started by the job), then P = 1 (model state there too), each
    larger world, and the planner (no world)."""
    from ocp_graphpar.measure.steps import (
        contender_state_bytes,
        measure_contender,
        paired_step_times,
    )
    from ocp_graphpar.tools.bench.memory_suite import memory_jobs
    from ocp_graphpar.tools.bench.planning import plan, plan_check

    jobs = [
        Job(
            0,
            ("paired", w.name),
            _definition(w, suite, paired=True),
            f"{w.name} paired timing",
            paired_step_times,
            (w.paired_timing, w.family, config, batches[w.name]),
            partial(tagged, "paired", w.name),
            {"rounds": w.paired_rounds},
        )
        for w, config in prepared
        if w.paired_timing
    ]
    for size in suite.sizes:
        for workload, config in prepared:
            name, batch, defined = (
                workload.name,
                batches[workload.name],
                _definition(workload, suite),
            )
            jobs += memory_jobs(workload, config, defined, size=size)
            if size == 1 and not workload.memory and not workload.inference:
                jobs.append(
                    Job(
                        1,
                        ("state", name),
                        defined,
                        f"{name} model state",
                        contender_state_bytes,
                        ("ours", workload.family, config),
                        partial(first_rank_record, "state", name),
                    )
                )
            for contender in workload.runs_at(size):
                jobs.append(
                    Job(
                        size,
                        ("run", name, contender, size),
                        defined,
                        f"P={size} {name} {contender}",
                        measure_contender,
                        (contender, workload.family, config, batch),
                        partial(_run_record, size, workload, contender),
                        {
                            "repeats": suite.repeats
                            if workload.repeats is None
                            else workload.repeats,
                            "inference": workload.inference,
                        },
                    )
                )
    for workload, config in prepared:
        name = workload.name
        jobs.append(
            Job(
                0,
                ("plan_check", name),
                _definition(workload, suite),
                f"{name} planner check",
                plan_check,
                (workload, config, batches[name]),
                as_is,
                {"sizes": suite.sizes},
            )
        )
    for index, spec in enumerate(suite.plans):
        jobs.append(
            Job(
                0,
                ("plan", index),
                fingerprint({"plan": spec, "config": Path(spec["config"]).read_text()}),
                f"plan {index}",
                plan,
                (spec,),
                as_is,
            )
        )
    return jobs


def _definition(workload: Workload, suite: Suite, paired: bool = False) -> str:
    """What a workload's records depend on: its definition (the paired-timing fields only for
    the paired record), its config file, the sizes and the default repeats."""
    spec = asdict(workload)
    spec.pop("tiny_overrides")  # applied to `overrides` when used
    for key in (
        "description",
        "floors",
        "contenders",
        "paired_timing",
        "paired_rounds",
        "contender_sizes",
    ):
        if not (paired and key.startswith("paired")):
            spec.pop(key)
    return fingerprint(
        {
            "workload": spec,
            "config": Path(workload.config).read_text(),
            "sizes": suite.sizes,
            "repeats": suite.repeats,
        }
    )


def _run_record(
    size: int, workload: Workload, contender: str, per_rank: list[dict], threads: int
) -> dict:
    return {
        "kind": "run",
        "workload": workload.name,
        "contender": contender,
        "size": size,
        "threads_per_rank": threads,
        "per_rank": per_rank,
    }


def workload_record(workload: Workload, batch) -> dict:
    """What a report says about a workload and its batch."""
    return {
        "kind": "workload",
        "workload": workload.name,
        "description": workload.description,
        "config": workload.config,
        "family": workload.family,
        "overrides": workload.overrides,
        "systems": workload.systems,
        "floors": workload.floors,
        "memory": workload.memory,
        "inference": workload.inference,
        "atoms": int(batch.natoms.sum()),
        "edges": int(batch.edge_index.shape[1]),
    }


def _brief(record: dict) -> str:
    ranks = record["per_rank"]
    return (
        f"{max(r['comm']['bytes'] for r in ranks) / 2**20:.2f} MiB/rank, "
        f"activations {max(r['memory']['activations'] for r in ranks) / 2**20:.0f} MiB/rank"
        + (f", step {max(r['step_s'] for r in ranks):.2f} s" if ranks[0]["step_s"] else "")
    )
