"""Inference workloads (``inference: true`` in a suite): one large structure predicted at every P.

A run of such a workload is :func:`~.measure.measure_contender` with ``inference``: one counted
prediction (energy and forces, eval mode, ``torch.no_grad()``) and timed ones after it. Its
activations are the call's peak of live bytes beyond what was live before it, i.e. beyond the
parameters (no gradients exist). The structure is built from a recipe in the suite
(:func:`slab_structure`) rather than read from a file, so no data file is needed.
"""

from __future__ import annotations

from ocp_graphpar.measure.contenders import CONTENDERS
from ocp_graphpar.tools.bench.tables import failed_list, mib

GIB = 2**30
#: Per-rank activation peak at P over ours at P = 1, at most.
INFERENCE_FLOORS = {2: 0.60, 4: 0.35}


def slab_structure(
    *,
    slab: str,
    size: list[int],
    a: float,
    vacuum: float,
    adsorbate: str,
    height: float = 1.8,
    rattle: float = 0.05,
    seed: int = 0,
):
    """A periodic fcc(111) slab of ``size`` unit cells with one ``adsorbate`` molecule (an ASE
    g2 name, its first atom ``height`` above a fcc hollow site and the rest above that atom),
    every position rattled by ``rattle`` A. Energy and forces are zero (a2g reads them)."""
    import numpy as np
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = fcc111(slab, size=tuple(size), a=a, vacuum=vacuum)
    mol = molecule(adsorbate)
    if len(mol) > 1 and mol.positions[1:, 2].mean() < mol.positions[0, 2]:
        mol.rotate(180, "x")
    add_adsorbate(atoms, mol, height, "fcc", mol_index=0)
    atoms.rattle(stdev=rattle, seed=seed)
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
    return atoms


def describe_system(system: str | dict) -> str:
    """A suite's system as the report names it."""
    if isinstance(system, str):
        from pathlib import Path

        return f"`{Path(system).name}`"
    size = "x".join(map(str, system["size"]))
    return (
        f"{system['slab']} fcc(111) slab of {size} cells (a = {system['a']} A, vacuum "
        f"{system['vacuum']} A) with {system['adsorbate']}, rattled by "
        f"{system.get('rattle', 0.05)} A"
    )


def _activations(run: dict) -> float:
    return max(rank["memory"]["activations"] for rank in run["per_rank"])


def inference_floors(entry: dict) -> list[tuple[str, float, float, bool]]:
    """(what, measured, floor, holds) for the per-rank activation peak at P against P = 1."""
    runs = entry["runs"]
    if ("ours", 1) not in runs:
        return []
    one = _activations(runs["ours", 1])
    checks = [
        (
            f"per-rank activation peak of a prediction, P={p} / P=1",
            _activations(runs["ours", p]) / one,
            floor,
        )
        for p, floor in INFERENCE_FLOORS.items()
        if ("ours", p) in runs
    ]
    return [(what, value, floor, value <= floor) for what, value, floor in checks]


def inference_section(name: str, entry: dict) -> list[str]:
    """An inference workload's section of ``docs/benchmarks.md``."""
    from ocp_graphpar.tools.bench.planning import plan_check_table

    info, runs = entry["info"], entry["runs"]
    lines = [
        f"## {name}",
        "",
        f"{info['description']}. Config `{info['config']}` with overrides "
        f"`{info['overrides']}`; {info['atoms']} atoms, {info['edges']} edges; "
        + "; ".join(describe_system(s) for s in info["systems"])
        + ".",
        "",
        "One prediction per call: energy and forces with the model in eval mode under "
        "`torch.no_grad()`, as fairchem's predict mode and ASE calculators call it; each rank "
        "holds the parameters and no gradients, optimizer state or EMA. The activation peak is "
        "the call's peak of live bytes beyond what was live before it (the parameters); time "
        "per call is the median wall time of the calls after the counted one, and CPU time "
        "the rank's process CPU seconds (at P = 1 a rank's two threads compete with whatever "
        "else the machine runs, so compare CPU times across models).",
        "",
        "| Floor | Measured | Floor | Holds |",
        "|---|---:|---:|---|",
        *(
            f"| {what} | {value:.3f} | <= {floor:.2f} | {'yes' if holds else 'NO'} |"
            for what, value, floor, holds in inference_floors(entry)
        ),
        "",
        "| Model | P | Parameters per rank | Activation peak per rank | / ours at P=1 "
        "| Time per call (s) | CPU time (s) | Bytes per call per rank | Threads/rank |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one = _activations(runs["ours", 1]) if ("ours", 1) in runs else None
    for (contender, size), run in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ranks = run["per_rank"]
        peak = _activations(run)
        seconds = [rank["step_s"] for rank in ranks]
        cpu = [rank["cpu_s"] for rank in ranks]
        lines.append(
            f"| {CONTENDERS[contender].label} | {size} "
            f"| {mib(max(r['memory']['parameters'] for r in ranks))} "
            f"| {mib(peak)} | {'-' if one is None else f'{peak / one:.3f}'} "
            f"| {'-' if None in seconds else f'{max(seconds):.2f}'} "
            f"| {'-' if None in cpu else f'{max(cpu):.2f}'} "
            f"| {max(r['comm']['bytes'] for r in ranks) / 2**20:,.2f} MiB "
            f"| {run['threads_per_rank']} |"
        )
    lines += ["", *failed_list(entry.get("failed", []))]
    if "plan_check" in entry:
        lines += plan_check_table(runs, entry["plan_check"])
    lines += _config_widths(entry.get("plan_check_config"))
    return lines


def _config_widths(record: dict | None) -> list[str]:
    """The planner at the config's own widths, for the same structure."""
    if not record:
        return []
    widths = ", ".join(f"{key}={value}" for key, value in record["widths"].items())
    estimates = ", ".join(
        f"P={p}: {value / GIB:,.2f} GiB" for p, value in record["estimates"].items()
    )
    return [
        "`ocp-graphpar plan --inference` for the config's own model, without the workload's "
        f"overrides ({widths}; {record['parameters'] / 1e6:,.1f}M parameters, "
        f"{record['parameters'] * 4 / GIB:,.2f} GiB per rank), on this structure's graph: "
        f"activations per rank {estimates}.",
        "",
    ]
