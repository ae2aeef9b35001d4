"""Pieces of the bench's report that its sections share: threshold tables, byte sizes, and
the list of runs that did not finish."""

from __future__ import annotations

from ocp_graphpar.measure.contenders import CONTENDERS

MIB = 2**20


def floor_table(checks, issue: str = "#8") -> list[str]:
    """A markdown table of ``(what, measured, bound, holds)`` checks."""
    lines = [f"| Floor (issue {issue}) | Measured | Floor | Holds |", "|---|---:|---:|---|"]
    for what, value, floor, holds in checks:
        lines.append(
            f"| {what} | {number(value, 3)} | <= {number(floor, 2)} "
            f"| {'yes' if holds else 'NO'} |"
        )
    return [*lines, ""]


def number(value: float, digits: int) -> str:
    """A count as a count (GPUs), a ratio with ``digits`` decimals."""
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def failed_list(failed: list[dict]) -> list[str]:
    """The records of runs that did not finish, as a markdown list (none: no lines)."""
    if not failed:
        return []
    lines = ["Did not finish on this machine (not measured; the tables leave them out):", ""]
    for record in failed:
        what = record["of"]
        if what == "run":
            what = f"{CONTENDERS[record['contender']].label} at P = {record['size']}"
        lines.append(f"* {what}: {record['reason']}.")
    return [*lines, ""]


def mib(value: float) -> str:
    """MiB, with a decimal below 100 MiB (tiny runs, sharded small models)."""
    return f"{value / MIB:,.0f} MiB" if value >= 100 * MIB else f"{value / MIB:,.1f} MiB"
