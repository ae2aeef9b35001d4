"""The report's memory section: per-rank memory with activation checkpointing and sharded
optimizer state, ours against upstream, for the workloads with a ``memory:`` setting.

Reads their runs (``ours_ck`` is ours with activation checkpointing), their model state
unsharded and sharded (:class:`~.records.StateSplit`, :class:`~.records.StateWorld`), their
paired step times, and the limits of the suite's plans.
"""

from __future__ import annotations

from ocp_graphpar.measure.contenders import CONTENDERS, OURS
from ocp_graphpar.tools.bench.limits import Check, named_checks
from ocp_graphpar.tools.bench.records import STATE_PARTS, WorkloadResults, state_total
from ocp_graphpar.tools.bench.tables import by_size, limit_table, mib


def memory_workloads(workloads: dict[str, WorkloadResults]) -> list[WorkloadResults]:
    return [results for results in workloads.values() if results.info.memory]


def memory_section(workloads: dict[str, WorkloadResults], plan_limits: list[Check]) -> list[str]:
    """``## Memory``: the limits, per-rank totals, model state and step-time cost."""
    chosen = memory_workloads(workloads)
    if not chosen:
        return []
    checks = [check for results in chosen for check in named_checks(results)]
    lines = [
        "## Memory",
        "",
        "Per-rank memory of a training step with activation checkpointing "
        "(`model.activation_checkpointing: True`) and sharded optimizer state "
        "(`optim.shard_optimizer_state: true`: AdamW's moments, the AMSGrad maximum and the EMA "
        "partitioned over every rank of the world; parameters and gradients stay replicated). "
        "Activations are the step's peak beyond parameters and gradients, measured as in the "
        "workloads above (one counted step per run).",
        "",
        *limit_table(checks + plan_limits),
    ]
    for results in chosen:
        lines += [f"### {results.info.workload}", "", f"{results.info.description}.", ""]
        lines += totals_table(results) + state_table(results)
    return lines + step_time_table(chosen)


def totals_table(results: WorkloadResults) -> list[str]:
    split = results.state_split
    replicated = state_total(split.unsharded) if split else None
    world = f"sharded over {split.world} ranks" if split else "sharded"
    lines = [
        f"| Model | P | Activations per rank | Total, state replicated | Total, state {world} |",
        "|---|---:|---:|---:|---:|",
    ]
    for (contender, size), run in by_size(results):
        activations = run.max("memory", "activations")
        plain = "-" if split is None else mib(activations + replicated)
        sharded = "-" if split is None else mib(activations + split.largest_share())
        if contender not in OURS:
            sharded = "n/a (upstream)"
        label = CONTENDERS[contender].label
        lines.append(f"| {label} | {size} | {mib(activations)} | {plain} | {sharded} |")
    return [*lines, ""]


def state_table(results: WorkloadResults) -> list[str]:
    split, spawned = results.state_split, results.state_world
    if split is None and spawned is None:
        return []
    rows, unsharded = [], None
    if split:
        unsharded = state_total(split.unsharded)
        formula = dict(split.unsharded)
        formula["optimizer"] /= split.world
        formula["ema"] /= split.world
        rows += [
            ("unsharded (one process)", split.unsharded),
            (
                f"sharded over {split.world} ranks, largest share (the trainer's partition "
                "of the same state, computed in one process)",
                max(split.sharded, key=state_total),
            ),
            (
                f"sharded over {split.world} ranks, formula: parameters + gradients + "
                f"(optimizer + EMA) / {split.world}",
                formula,
            ),
        ]
    if spawned:
        ranks = spawned.per_rank
        for key in ("unsharded", "sharded"):
            largest = max((rank[key] for rank in ranks), key=state_total)
            rows.append(
                (f"{key}, measured on each of {len(ranks)} spawned gloo ranks (largest)", largest)
            )
        unsharded = unsharded or max(state_total(r["unsharded"]) for r in ranks)
    lines = [
        "Model state per rank after one AdamW (AMSGrad) step and EMA update:",
        "",
        "| State | Parameters | Gradients | Optimizer | EMA | Total | / unsharded |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, state in rows:
        parts = " | ".join(mib(state[k]) for k in STATE_PARTS)
        total = state_total(state)
        lines.append(f"| {what} | {parts} | {mib(total)} | {total / unsharded:.3f} |")
    return [*lines, ""]


def step_time_table(chosen: list[WorkloadResults]) -> list[str]:
    timed = [r for r in chosen if r.paired and {"ours", "ours_ck"} <= set(r.paired.step_s)]
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
    for results in timed:
        wall, cpu = results.paired.step_s, results.paired.cpu_s
        lines.append(
            f"| {results.info.workload} | {wall['ours']:.2f} | {wall['ours_ck']:.2f} "
            f"| {wall['ours_ck'] / wall['ours']:.3f} | {cpu['ours_ck'] / cpu['ours']:.3f} |"
        )
    return [*lines, ""]
