"""Upper bounds a suite holds its measurements to, written as data in the suite.

A workload's ``limits`` entry is a ratio of one measure and a bound on it::

    {measure: bytes, of: ours@4, over: gp_gemnet_t@4, at_most: 0.10}
    {measure: step_time, of: ours, over: gemnet_t, at_most: 1.05}   # paired timing, P = 1
    {measure: sharded_state, world: 4, at_most: 0.55}

and a ``plans`` entry may carry ``at_most: {gpus_per_group: 4}``. A limit is checked when the
records it reads exist (a suite run at sizes 1 and 2 decides no limit at P = 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.measure.contenders import CONTENDERS
from ocp_graphpar.tools.bench.records import Plan, Run, WorkloadResults, state_total

#: Measures of a run: (what the ratio compares, the value of a run).
RUN_MEASURES: dict[str, tuple[str, Callable[[Run], float]]] = {
    "bytes": ("bytes per step, all ranks", lambda run: run.total("comm", "bytes")),
    "activations": ("activation peak per rank", lambda run: run.max("memory", "activations")),
    "flops": ("matmul FLOPs per step", lambda run: run.total("flops")),
}
#: Measures of the paired timing at P = 1 (alternating processes).
PAIRED_MEASURES = {"step_time": ("step time", "step_s"), "cpu_time": ("step CPU time", "cpu_s")}
STATE_MEASURES = {"sharded_state"}
PLAN_MEASURES = {"gpus_per_group"}


class Check(NamedTuple):
    what: str
    value: float
    at_most: float

    @property
    def holds(self) -> bool:
        return self.value <= self.at_most


def check_limits(workload: str, limits: list[dict], contenders: list[str]) -> None:
    """A clear error for a limit the workload cannot measure."""
    known = set(RUN_MEASURES) | set(PAIRED_MEASURES) | STATE_MEASURES
    for limit in limits:
        measure = limit.get("measure")
        if measure not in known or "at_most" not in limit:
            raise UserFacingError(
                f"workload {workload}: limit {limit} needs `measure` (one of {sorted(known)}) "
                "and `at_most`"
            )
        for side in ("of", "over"):
            if side in limit and _contender(limit[side])[0] not in contenders:
                raise UserFacingError(
                    f"workload {workload}: limit {limit} names {limit[side]!r}, which the "
                    f"workload does not run (its contenders: {contenders})"
                )


def _contender(ref: str) -> tuple[str, int]:
    """``"ours@4"`` -> ``("ours", 4)``; a bare name is at P = 1."""
    name, _, size = str(ref).partition("@")
    return name, int(size or 1)


def _label(ref: str) -> str:
    name, size = _contender(ref)
    return f"{CONTENDERS[name].label} at P={size}"


def workload_checks(results: WorkloadResults) -> list[Check]:
    """The workload's limits that its records decide."""
    checks = []
    for limit in results.info.limits:
        measure, bound = limit["measure"], float(limit["at_most"])
        if measure in RUN_MEASURES:
            what, value_of = RUN_MEASURES[measure]
            of, over = (results.runs.get(_contender(limit[side])) for side in ("of", "over"))
            if of is not None and over is not None:
                label = f"{what}, {_label(limit['of'])} / {_label(limit['over'])}"
                checks.append(Check(label, value_of(of) / value_of(over), bound))
        elif measure in PAIRED_MEASURES:
            what, key = PAIRED_MEASURES[measure]
            paired = results.paired
            of, over = limit["of"], limit["over"]
            if paired is not None and {of, over} <= set(getattr(paired, key)):
                times = getattr(paired, key)
                label = (
                    f"{what} at P=1, {CONTENDERS[of].label} / {CONTENDERS[over].label} "
                    "(alternating processes)"
                )
                checks.append(Check(label, times[of] / times[over], bound))
        else:
            checks += _state_checks(results, int(limit.get("world", 4)), bound)
    return checks


def named_checks(results: WorkloadResults) -> list[Check]:
    """:func:`workload_checks`, each named with its workload (for lists of several)."""
    name = results.info.workload
    return [check._replace(what=f"{name}: {check.what}") for check in workload_checks(results)]


def _state_checks(results: WorkloadResults, world: int, bound: float) -> list[Check]:
    """Per-rank model state sharded over ``world`` ranks / unsharded: the trainer's partition
    computed in one process, and measured on spawned ranks where the suite did."""
    checks = []
    split, spawned = results.state_split, results.state_world
    if split is not None and split.world == world:
        ratio = split.largest_share() / state_total(split.unsharded)
        what = f"model state per rank, sharded over {world} / unsharded (trainer's partition)"
        checks.append(Check(what, ratio, bound))
    if spawned is not None and len(spawned.per_rank) == world:
        ranks = spawned.per_rank
        ratio = max(state_total(r["sharded"]) for r in ranks) / max(
            state_total(r["unsharded"]) for r in ranks
        )
        what = f"model state per rank, sharded / unsharded, measured on {world} ranks"
        checks.append(Check(what, ratio, bound))
    return checks


def plan_checks(plan: Plan) -> list[Check]:
    """The limits a plan entry sets: the GPUs per GP group the planner recommends."""
    bound = plan.at_most.get("gpus_per_group")
    if bound is None:
        return []
    details = plan.plan
    gp = details.get("recommended_gp")
    what = (
        f"`ocp-graphpar plan` for {details['config']}, {details['graph']['atoms']} atoms, "
        f"{details['graph']['edges']} edges, {details['gpu_mem_gib']:g} GiB: GPUs per GP group"
    )
    return [Check(what, math.inf if gp is None else gp, bound)]
