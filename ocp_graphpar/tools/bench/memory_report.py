"""The report's issue #19 section: per-rank memory with activation checkpointing and sharded
optimizer state, ours against upstream, the issue's floors and the memory-vs-P plot.

Reads the records of workloads with a ``memory:`` section (:mod:`.memory_suite`): their runs
(``ours_ck`` is ours with activation checkpointing), ``state_split``, ``state_world``, the
paired step times and the planner's plans.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from ocp_graphpar.measure.contenders import CONTENDERS, OURS
from ocp_graphpar.tools.bench.tables import floor_table, mib

MIB = 2**20
CHECKPOINTED_PEAK_FLOOR = 0.35  # ours_ck / upstream activation peak at P = 1
SHARDED_STATE_FLOOR = 0.55  # per-rank model state sharded over 4 ranks / unsharded
FLOOR_WORLD = 4  # the world the sharded-state floor is set for
PLAN_GP_FLOOR = 4  # GPUs per GP group the planner recommends for the plan below
PLAN_FLOOR_CASE = {
    "config": "configs/s2ef/gemnet_xl.yml",
    "atoms": 1000,
    "edges": 50000,
    "gpu_mem_gib": 32,
}


def _memory_workloads(table: dict) -> Iterator[tuple[str, dict]]:
    return ((name, e) for name, e in table.items() if e.get("info", {}).get("memory"))


def _activations(run: dict) -> float:
    return max(rank["memory"]["activations"] for rank in run["per_rank"])


def _total(state: dict) -> float:
    return state["parameters"] + state["gradients"] + state["optimizer"] + state["ema"]


def _upstream(entry: dict) -> str | None:
    """The workload's single-process upstream contender measured at P = 1."""
    return next((c for c, p in entry["runs"] if p == 1 and not CONTENDERS[c].graph_parallel), None)


def _sharded_share(entry: dict) -> tuple[int, float] | None:
    """``(world, largest rank's state)`` sharded, from the trainer's partition."""
    split = entry.get("state_split")
    if split is None:
        return None
    return split["world"], max(_total(share) for share in split["sharded"])


def memory_floors(table: dict, plans: list[dict]) -> list[tuple[str, float, float, bool]]:
    """(what, measured, floor, holds) for issue #19's floors the records can decide."""
    checks: list[tuple[str, float, float]] = []
    for name, entry in _memory_workloads(table):
        runs, upstream = entry["runs"], _upstream(entry)
        if ("ours_ck", 1) in runs and upstream:
            ratio = _activations(runs["ours_ck", 1]) / _activations(runs[upstream, 1])
            what = (
                f"{name}: activation peak at P=1, checkpointed ours / {CONTENDERS[upstream].label}"
            )
            checks.append((what, ratio, CHECKPOINTED_PEAK_FLOOR))
        world = entry.get("state_world")
        if world is not None and len(world["per_rank"]) == FLOOR_WORLD:
            ranks = world["per_rank"]
            ratio = max(_total(r["sharded"]) for r in ranks) / max(
                _total(r["unsharded"]) for r in ranks
            )
            what = (
                f"{name}: model state per rank, sharded / unsharded, measured on {len(ranks)} ranks"
            )
            checks.append((what, ratio, SHARDED_STATE_FLOOR))
        share = _sharded_share(entry)
        if share is not None and share[0] == FLOOR_WORLD:
            ratio = share[1] / _total(entry["state_split"]["unsharded"])
            what = (
                f"{name}: model state per rank, sharded over {share[0]} / unsharded "
                "(trainer's partition, one process)"
            )
            checks.append((what, ratio, SHARDED_STATE_FLOOR))
    for plan in plans:
        if "recommended" in plan and _is_floor_plan(plan):
            gp = plan["recommended_gp"]
            what = (
                f"`ocp-graphpar plan` for GemNet-XL, {plan['graph']['atoms']} atoms, "
                f"{plan['graph']['edges']} edges, {plan['gpu_mem_gib']:g} GiB: GPUs per GP group"
            )
            checks.append((what, math.inf if gp is None else gp, PLAN_GP_FLOOR))
    return [(what, value, floor, value <= floor) for what, value, floor in checks]


def _is_floor_plan(plan: dict) -> bool:
    case = PLAN_FLOOR_CASE
    return (
        Path(plan["config"]).as_posix().endswith(case["config"])
        and plan["graph"]["atoms"] == case["atoms"]
        and plan["graph"]["edges"] == case["edges"]
        and plan["gpu_mem_gib"] == case["gpu_mem_gib"]
    )


def memory_section(table: dict, plans: list[dict]) -> list[str]:
    """``## Memory (issue #19)``: floors, per-rank totals, model state and step-time cost."""

    workloads = list(_memory_workloads(table))
    if not workloads:
        return []
    lines = [
        "## Memory (issue #19)",
        "",
        "Per-rank memory of a training step with activation checkpointing "
        "(`model.activation_checkpointing: True`) and sharded optimizer state "
        "(`optim.shard_optimizer_state: true`: AdamW's moments, the AMSGrad maximum and the EMA "
        "partitioned over every rank of the world; parameters and gradients stay replicated). "
        "Activations are the step's peak beyond parameters and gradients, measured as in the "
        "workloads above (one counted step per run).",
        "",
        *floor_table(memory_floors(table, plans), issue="#19"),
    ]
    for name, entry in workloads:
        lines += [f"### {name}", "", f"{entry['info']['description']}.", ""]
        lines += _totals_table(entry)
        lines += _state_table(entry)
    lines += _step_time_table(workloads)
    return lines


def _totals_table(entry: dict) -> list[str]:
    share = _sharded_share(entry)
    split = entry.get("state_split")
    replicated = _total(split["unsharded"]) if split else None
    world = f"sharded over {share[0]} ranks" if share else "sharded"
    lines = [
        "| Model | P | Activations per rank | Total, state replicated | " f"Total, state {world} |",
        "|---|---:|---:|---:|---:|",
    ]
    for (contender, size), run in sorted(
        entry["runs"].items(), key=lambda kv: (kv[0][1], kv[0][0])
    ):
        activations = _activations(run)
        plain = "-" if replicated is None else mib(activations + replicated)
        sharded = "-" if share is None else mib(activations + share[1])
        if contender not in OURS:
            sharded = "n/a (upstream)"
        lines.append(
            f"| {CONTENDERS[contender].label} | {size} | {mib(activations)} | {plain} "
            f"| {sharded} |"
        )
    return [*lines, ""]


def _state_table(entry: dict) -> list[str]:
    split, world = entry.get("state_split"), entry.get("state_world")
    if split is None and world is None:
        return []
    rows = []
    unsharded = _total(split["unsharded"]) if split else None
    if split:
        largest = max(split["sharded"], key=_total)
        rows += [
            ("unsharded (one process)", split["unsharded"]),
            (
                f"sharded over {split['world']} ranks, largest share (the trainer's partition "
                "of the same state, computed in one process)",
                largest,
            ),
        ]
        formula = {**split["unsharded"]}
        formula["optimizer"] /= split["world"]
        formula["ema"] /= split["world"]
        rows.append(
            (
                f"sharded over {split['world']} ranks, formula: parameters + gradients + "
                f"(optimizer + EMA) / {split['world']}",
                formula,
            )
        )
    if world:
        ranks = world["per_rank"]
        for key in ("unsharded", "sharded"):
            largest = max((rank[key] for rank in ranks), key=_total)
            rows.append(
                (f"{key}, measured on each of {len(ranks)} spawned gloo ranks (largest)", largest)
            )
        unsharded = unsharded or _total(max((r["unsharded"] for r in ranks), key=_total))
    lines = [
        "Model state per rank after one AdamW (AMSGrad) step and EMA update:",
        "",
        "| State | Parameters | Gradients | Optimizer | EMA | Total | / unsharded |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, state in rows:
        parts = " | ".join(mib(state[k]) for k in ("parameters", "gradients", "optimizer", "ema"))
        lines.append(
            f"| {what} | {parts} | {mib(_total(state))} " f"| {_total(state) / unsharded:.3f} |"
        )
    return [*lines, ""]


def _step_time_table(workloads: list[tuple[str, dict]]) -> list[str]:
    timed = [
        (n, e["paired"])
        for n, e in workloads
        if {"ours", "ours_ck"} <= set(e.get("paired", {}).get("step_s", {}))
    ]
    if not timed:
        return []
    lines = [
        "### What checkpointing costs in step time",
        "",
        "Step time at P = 1 with and without activation checkpointing, timed in alternating "
        "fresh processes (each a warm-up step and two timed steps; see the paired tables above):",
        "",
        "| Workload | Without (s) | With (s) | With / without, wall | With / without, CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, paired in timed:
        wall, cpu = paired["step_s"], paired["cpu_s"]
        lines.append(
            f"| {name} | {wall['ours']:.2f} | {wall['ours_ck']:.2f} "
            f"| {wall['ours_ck'] / wall['ours']:.3f} "
            f"| {cpu['ours_ck'] / cpu['ours']:.3f} |"
        )
    return [*lines, ""]


def plot_memory(table: dict, path: Path) -> Path:
    """Per-rank memory against P for each memory workload: checkpointed activations and
    totals (state replicated and sharded), ours and upstream at P = 1, and ``1/P`` from
    the checkpointed P = 1."""
    import matplotlib.pyplot as plt

    workloads = list(_memory_workloads(table))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], workloads):
        runs = entry["runs"]
        ck = sorted((p, _activations(run)) for (c, p), run in runs.items() if c == "ours_ck")
        if ck:
            sizes = [p for p, _ in ck]
            ax.plot(sizes, [v / MIB for _, v in ck], "o-", label="ours, checkpointed: activations")
            split, share = entry.get("state_split"), _sharded_share(entry)
            if split:
                state = _total(split["unsharded"])
                ax.plot(
                    sizes,
                    [(v + state) / MIB for _, v in ck],
                    "o--",
                    label="ours, checkpointed: + state",
                )
            if share:
                ax.plot(
                    sizes,
                    [(v + share[1]) / MIB for _, v in ck],
                    "o:",
                    label=f"ours, checkpointed: + state sharded over {share[0]}",
                )
            if ck[0][0] == 1:
                ax.plot(
                    sizes,
                    [ck[0][1] / p / MIB for p in sizes],
                    "-",
                    color="grey",
                    lw=0.8,
                    label="checkpointed P=1 / P",
                )
        for contender in ("ours", _upstream(entry)):
            if contender and (contender, 1) in runs:
                ax.plot(
                    [1],
                    [_activations(runs[contender, 1]) / MIB],
                    "s",
                    label=f"{CONTENDERS[contender].label}: activations",
                )
        ax.set_title(name)
        ax.set_xlabel("GP ranks P")
        ax.set_xticks(sorted({p for _, p in runs}))
        ax.set_ylabel("MiB per rank")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
