"""The layout of an OC20 leaderboard submission: its splits, its keys per task, and a summary.

A submission holds, for each of the four OC20 test splits ``id``, ``ood_ads``, ``ood_cat`` and
``ood_both``, the arrays ``{split}_{key}`` below (``n`` systems, ``r`` per-atom rows):

==========  =============  =========================================================================
task        key            content
==========  =============  =========================================================================
all         ``ids``        (n,) str: ``"{sid}_{fid}"`` for S2EF, ``"{sid}"`` for IS2RE and IS2RS
s2ef        ``energy``     (n,) float16/32/64, one energy per id
s2ef        ``forces``     (r, 3) float: forces of the *free* atoms (``fixed == 0``), concatenated
is2rs       ``pos``        (r, 3) float: relaxed positions of *all* atoms, concatenated
s2ef/is2rs  ``chunk_idx``  (n - 1,) int: ``np.cumsum(rows_per_system)[:-1]``, so
                           ``np.split(forces, chunk_idx)`` gives one array per id
is2re       ``energy``     (n,) float, one (relaxed) energy per system
==========  =============  =========================================================================

Both :mod:`~ocp_graphpar.tools.export.validation` and :mod:`~ocp_graphpar.tools.export.writing`
build on these definitions, so they live apart from either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ocp_graphpar.errors import UserFacingError

SPLITS = ("id", "ood_ads", "ood_cat", "ood_both")
#: Keys of each split, per task.
TASK_KEYS = {
    "s2ef": ("ids", "energy", "forces", "chunk_idx"),
    "is2rs": ("ids", "pos", "chunk_idx"),
    "is2re": ("ids", "energy"),
}
TASKS = tuple(TASK_KEYS)
DTYPES = ("float16", "float32", "float64")
#: The per-atom array of each task, split into systems by ``chunk_idx``.
ROWS_KEY = {"s2ef": "forces", "is2rs": "pos"}
FRAME_ID = re.compile(r"\d+_\d+")  # "{sid}_{fid}", as fairchem writes for samples with a fid


@dataclass(frozen=True)
class SplitSummary:
    """Sizes and dtypes of one split: ``rows`` of forces/pos (``None`` for IS2RE)."""

    split: str
    systems: int
    rows: int | None
    dtypes: dict[str, str] = field(default_factory=dict)


def option(split: str) -> str:
    """The CLI option of a split: ``ood_ads`` -> ``--ood-ads``."""
    return "--" + split.replace("_", "-")


def check_task(task: str) -> None:
    """Refuse a task that is not one of :data:`TASKS`."""
    if task not in TASK_KEYS:
        raise UserFacingError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")


def summarize_submission(arrays: Mapping[str, np.ndarray | None], task: str) -> list[SplitSummary]:
    """Systems, per-atom rows and value dtypes of each split present (lenient: no checks)."""
    summaries = []
    for split in SPLITS:
        ids = arrays.get(f"{split}_ids")
        rows_key = ROWS_KEY.get(task)
        values = arrays.get(f"{split}_{rows_key}") if rows_key else None
        values_of = {name: arrays.get(f"{split}_{name}") for name in TASK_KEYS[task][1:]}
        values_of.pop("chunk_idx", None)
        dtypes = {name: str(a.dtype) for name, a in values_of.items() if a is not None}
        systems = len(ids) if ids is not None and ids.ndim == 1 else 0
        rows = len(values) if values is not None and values.ndim >= 1 else None
        summaries.append(SplitSummary(split, systems, rows, dtypes))
    return summaries


def format_summary(summaries: list[SplitSummary], task: str) -> str:
    """A small table: one line per split with systems, rows and dtypes."""
    rows_key = ROWS_KEY.get(task)
    header = f"  {'split':<9} {'systems':>9}" + (f" {rows_key + ' rows':>11}" if rows_key else "")
    lines = [header + "  dtypes"]
    for s in summaries:
        rows = f" {s.rows if s.rows is not None else '-':>11}" if rows_key else ""
        dtypes = ", ".join(f"{name} {dtype}" for name, dtype in s.dtypes.items())
        lines.append(f"  {s.split:<9} {s.systems:>9}{rows}  {dtypes}")
    return "\n".join(lines)


def forces_note(summaries: list[SplitSummary]) -> str:
    """The free-atom force convention of S2EF submissions, with the number of rows found."""
    rows = sum(s.rows or 0 for s in summaries)
    systems = sum(s.systems for s in summaries)
    return (
        "note: fairchem 1.x writes the forces of free atoms only (fixed == 0), which is what the "
        f"leaderboard compares; this file has {rows} force rows for {systems} systems "
        "(all-atom forces would not match the reference)."
    )
