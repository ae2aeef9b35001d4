"""OC20 leaderboard submissions: export fairchem 1.x predictions, validate submission files.

Needs numpy only. ``ocp-graphpar export s2ef|is2rs|is2re`` joins one prediction file per OC20
test split (``id``, ``ood_ads``, ``ood_cat``, ``ood_both``) into one ``.npz`` with keys
``{split}_{key}``, written atomically and checked first; ``ocp-graphpar validate FILE --task T``
lists every defect of a submission. See :mod:`ocp_graphpar.tools.export.submission` for the
layout of inputs and outputs.
"""

from __future__ import annotations

from ocp_graphpar.tools.export.submission import (
    DTYPES,
    SPLITS,
    TASK_KEYS,
    TASKS,
    Defect,
    SplitSummary,
    check_submission,
    collect_predictions,
    export_submission,
    load_submission,
    read_predictions,
    resolve_prediction_file,
    summarize_submission,
    validate_submission,
    write_submission,
)

__all__ = [
    "DTYPES",
    "SPLITS",
    "TASKS",
    "TASK_KEYS",
    "Defect",
    "SplitSummary",
    "check_submission",
    "collect_predictions",
    "export_submission",
    "load_submission",
    "read_predictions",
    "resolve_prediction_file",
    "summarize_submission",
    "validate_submission",
    "write_submission",
]
