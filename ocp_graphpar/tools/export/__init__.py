"""OC20 leaderboard submissions: export fairchem 1.x predictions, validate submission files.

Needs numpy only. ``ocp-graphpar export s2ef|is2rs|is2re`` joins one prediction file per OC20
test split (``id``, ``ood_ads``, ``ood_cat``, ``ood_both``) into one ``.npz`` with keys
``{split}_{key}``, written atomically and checked first; ``ocp-graphpar validate FILE --task T``
lists every defect of a submission. :mod:`ocp_graphpar.tools.export.layout` describes the
output, :mod:`~ocp_graphpar.tools.export.validation` what it is checked for, and
:mod:`~ocp_graphpar.tools.export.writing` the inputs and how the file is written.
"""

from __future__ import annotations

from ocp_graphpar.tools.export.layout import (
    DTYPES,
    SPLITS,
    TASK_KEYS,
    TASKS,
    SplitSummary,
    summarize_submission,
)
from ocp_graphpar.tools.export.validation import (
    Defect,
    check_submission,
    load_submission,
    validate_submission,
)
from ocp_graphpar.tools.export.writing import (
    collect_predictions,
    export_submission,
    read_predictions,
    resolve_prediction_file,
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
