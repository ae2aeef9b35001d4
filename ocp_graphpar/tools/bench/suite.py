"""Run a benchmark suite (``configs/bench/*.yml``): every workload, contender and GP size.

Each GP size gets one world of spawned gloo ranks, with the machine's cores split between
them; every (workload, contender) pair then runs on it in turn. Results are plain data (one
dict per run, per-rank lists inside), kept in a JSON file that the report renders.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.bench.contenders import CONTENDERS

log = logging.getLogger(__name__)


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

    def model_config(self) -> dict:
        """The config's ``model`` section, run on the edges the batch carries."""
        from fairchem.core.common.utils import load_config

        config = dict(load_config(self.config)[0]["model"])
        config.pop("name")
        return {**config, "otf_graph": False, **self.overrides}

    def runs_at(self, size: int) -> list[str]:
        return [c for c in self.contenders if size == 1 or CONTENDERS[c].graph_parallel]


@dataclass
class Suite:
    workloads: list[Workload]
    sizes: list[int]
    repeats: int = 2
    plans: list[dict] = field(default_factory=list)  # ``ocp-graphpar plan`` arguments

    def select(self, names: list[str] | None) -> Suite:
        if not names:
            return self
        unknown = set(names) - {w.name for w in self.workloads}
        if unknown:
            known = ", ".join(w.name for w in self.workloads)
            raise UserFacingError(f"no workload named {sorted(unknown)} (the suite has: {known})")
        chosen = [w for w in self.workloads if w.name in names]
        return Suite(chosen, self.sizes, self.repeats, plans=[])


def load_suite(path: str | os.PathLike) -> Suite:
    """A suite from YAML; names a missing file or unknown contender in the error."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"benchmark suite {path} does not exist; pass --suite FILE.yml")
    spec = yaml.safe_load(path.read_text())
    workloads = [Workload(**entry) for entry in spec["workloads"]]
    for workload in workloads:
        unknown = set(workload.contenders) - set(CONTENDERS)
        if unknown:
            raise UserFacingError(
                f"workload {workload.name}: unknown contenders {sorted(unknown)}; "
                f"choose from {sorted(CONTENDERS)}"
            )
    sizes = list(spec.get("sizes", [1, 2, 4]))
    return Suite(workloads, sizes, int(spec.get("repeats", 2)), list(spec.get("plans", [])))


def load_batch(systems: list[str], cutoff: float, max_neighbors: int):
    """Collate the listed structures with their radius graph.

    ``path`` is frame 0 of an ASE-readable file, ``path@K`` frame K; a folder ``dir@K`` is
    item K of an LMDB dataset written by ``ocp-graphpar data`` (or any fairchem S2EF LMDB).
    """
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(
        max_neigh=max_neighbors, radius=cutoff, r_energy=True, r_forces=True, r_edges=True
    )
    return data_list_collater([_structure(s, a2g) for s in systems], otf_graph=False)


def _structure(spec: str, a2g):
    from ocp_graphpar.tools.data.reading import read_frames

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


def run_suite(suite: Suite) -> list[dict]:
    """Every run of the suite; one dict per (size, workload, contender)."""
    from ocp_graphpar.parallel.testing import GlooWorld
    from ocp_graphpar.tools.bench.measure import (
        measure_contender,
        model_state_bytes,
        paired_step_times,
    )

    prepared = [(w, w.model_config()) for w in suite.workloads]
    batches = {
        w.name: load_batch(w.systems, float(cfg["cutoff"]), int(cfg.get("max_neighbors", 50)))
        for w, cfg in prepared
    }
    tasks = [(p, w, cfg, c) for p in suite.sizes for w, cfg in prepared for c in w.runs_at(p)]
    paired = [(w, cfg) for w, cfg in prepared if w.paired_timing]
    results = []
    total_runs = len(tasks) + len(prepared) + len(paired)
    progress = tqdm(total=total_runs, desc="bench", unit="run")
    cores = os.cpu_count() or 1
    for size in suite.sizes:
        threads = max(1, cores // size)
        with GlooWorld(size, threads_per_rank=threads, timeout_s=7200.0) as world:
            if size == 1:
                for workload, config in prepared:
                    progress.set_postfix_str(f"{workload.name} model state")
                    state = world.run(model_state_bytes, "ours", workload.family, config)[0]
                    results.append({"kind": "state", "workload": workload.name, **state})
                    progress.update()
                for workload, config in paired:
                    progress.set_postfix_str(f"{workload.name} paired timing")
                    times = world.run(
                        paired_step_times,
                        workload.paired_timing,
                        workload.family,
                        config,
                        batches[workload.name],
                    )[0]
                    results.append({"kind": "paired", "workload": workload.name, **times})
                    progress.update()
            for p, workload, config, contender in tasks:
                if p != size:
                    continue
                progress.set_postfix_str(f"P={size} {workload.name} {contender}")
                per_rank = world.run(
                    measure_contender,
                    contender,
                    workload.family,
                    config,
                    batches[workload.name],
                    repeats=workload.repeats or suite.repeats,
                )
                results.append(_run_record(size, threads, workload, contender, per_rank))
                progress.update()
                log.info("P=%d %s %s: %s", size, workload.name, contender, _brief(results[-1]))
    progress.close()
    checks = [_plan_check(w, cfg, batches[w.name], suite.sizes) for w, cfg in prepared]
    plans = [_plan(spec) for spec in tqdm(suite.plans, desc="plans", unit="plan")]
    return (
        [_workload_record(w, batches[w.name]) for w in suite.workloads] + results + checks + plans
    )


def _plan_check(workload: Workload, config: dict, batch, sizes: list[int]) -> dict:
    """The planner's activation estimate for this workload's batch at every size, to set
    beside the measured peaks."""
    from ocp_graphpar.tools.bench.contenders import build_contender
    from ocp_graphpar.tools.plan.estimate import GraphSize, activation_bytes
    from ocp_graphpar.tools.plan.trace import WIDTHS, model_graph_size, trace_model

    trace = trace_model(workload.family, config)
    widths = {name: config[name] for name in WIDTHS[workload.family] if name in config}
    counts = model_graph_size(
        workload.family, build_contender("ours", workload.family, config), batch
    )
    graph = GraphSize(counts["atoms"], counts["edges"], counts["triplets"], counts.get("kmax", 1))
    estimates = {str(p): activation_bytes(trace, widths, graph, batch=1, gp=p) for p in sizes}
    return {"kind": "plan_check", "workload": workload.name, "estimates": estimates}


def _plan(spec: dict) -> dict:
    from ocp_graphpar.tools.plan.estimate import GraphSize, plan_memory

    spec = dict(spec)
    graph = GraphSize.from_counts(spec.pop("atoms"), spec.pop("edges"))
    return {"kind": "plan", "workload": "", **plan_memory(spec.pop("config"), graph, **spec)}


def _run_record(size: int, threads: int, workload: Workload, contender: str, per_rank) -> dict:
    return {
        "kind": "run",
        "workload": workload.name,
        "contender": contender,
        "size": size,
        "threads_per_rank": threads,
        "per_rank": per_rank,
    }


def _workload_record(workload: Workload, batch) -> dict:
    return {
        "kind": "workload",
        "workload": workload.name,
        "description": workload.description,
        "config": workload.config,
        "family": workload.family,
        "systems": workload.systems,
        "floors": workload.floors,
        "atoms": int(batch.natoms.sum()),
        "edges": int(batch.edge_index.shape[1]),
    }


def _brief(record: dict) -> str:
    ranks = record["per_rank"]
    return (
        f"{max(r['comm']['bytes'] for r in ranks) / 2**20:.2f} MiB/rank, "
        f"activations {max(r['memory']['activations'] for r in ranks) / 2**20:.0f} MiB/rank, "
        f"step {max(r['step_s'] for r in ranks):.2f} s"
    )
