"""Pieces of the report that its sections share: tables of limits, sizes, times."""

from __future__ import annotations

from ocp_graphpar.measure.contenders import CONTENDERS
from ocp_graphpar.tools.bench.limits import Check
from ocp_graphpar.tools.bench.records import WorkloadResults

MIB = 2**20


def limit_table(checks: list[Check]) -> list[str]:
    """The limits as a markdown table (none: no lines)."""
    if not checks:
        return []
    lines = ["| Limit | Measured | At most | Holds |", "|---|---:|---:|---|"]
    for check in checks:
        value = check.value
        measured = str(value) if isinstance(value, int) else f"{value:.3f}"
        holds = "yes" if check.holds else "NO"
        lines.append(f"| {check.what} | {measured} | {check.at_most:g} | {holds} |")
    return [*lines, ""]


def failed_list(results: WorkloadResults) -> list[str]:
    if not results.failed:
        return []
    lines = ["Did not finish on this machine (not measured; the tables leave them out):", ""]
    for failed in results.failed:
        what = failed.of
        if what == "run":
            what = f"{CONTENDERS[failed.contender].label} at P = {failed.size}"
        lines.append(f"* {what}: {failed.reason}.")
    return [*lines, ""]


def mib(value: float) -> str:
    """MiB, with a decimal below 100 MiB (tiny runs, sharded small models)."""
    return f"{value / MIB:,.0f} MiB" if value >= 100 * MIB else f"{value / MIB:,.1f} MiB"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def by_size(results: WorkloadResults):
    return sorted(results.runs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
