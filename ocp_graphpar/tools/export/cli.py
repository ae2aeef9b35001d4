"""``ocp-graphpar export ...`` and ``ocp-graphpar validate``: OC20 leaderboard submission files."""

from __future__ import annotations

import argparse

from ocp_graphpar.tools.export.layout import (
    DTYPES,
    ROWS_KEY,
    SPLITS,
    TASKS,
    forces_note,
    format_summary,
    option,
    summarize_submission,
)
from ocp_graphpar.tools.export.validation import check_submission, load_submission
from ocp_graphpar.tools.export.writing import (
    INPUT_NAMES,
    collect_predictions,
    output_path,
    write_submission,
)

_TASK_HELP = {
    "s2ef": "energies and free-atom forces from fairchem --mode predict",
    "is2rs": "relaxed positions from fairchem --mode run-relaxations (task.write_pos: True)",
    "is2re": "one energy per system from fairchem --mode predict (an energy model)",
}


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``export TASK``."""
    output_path(args.out, args.overwrite)  # fail before reading anything
    split_files = {split: getattr(args, split) for split in SPLITS}
    arrays, notes = collect_predictions(args.task, split_files, args.dtype)
    path = write_submission(arrays, args.task, args.out, overwrite=args.overwrite)
    print(f"wrote {args.task} submission {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    print(format_summary(summarize_submission(arrays, args.task), args.task))
    for split in SPLITS:
        print(f"  {split}: " + "; ".join(notes[split]))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Handler of ``validate FILE --task TASK``: exit 0 if valid, 1 with every defect listed."""
    arrays, defects = load_submission(args.file)
    defects += check_submission(arrays, args.task)
    summaries = summarize_submission(arrays, args.task)
    for defect in defects:
        print(defect)
    if args.task == "s2ef":
        print(forces_note(summaries))
    if defects:
        print(
            f"INVALID: {args.file} is not a valid {args.task} submission: "
            f"{len(defects)} defect{'s' if len(defects) > 1 else ''} (listed above)"
        )
        return 1
    rows_key = ROWS_KEY.get(args.task)
    rows = f", {sum(s.rows or 0 for s in summaries)} {rows_key} rows" if rows_key else ""
    dtypes = sorted({f"{k} {v}" for s in summaries for k, v in s.dtypes.items()})
    systems = sum(s.systems for s in summaries)
    print(
        f"OK: {args.file} is a valid {args.task} submission "
        f"({len(summaries)} splits, {systems} systems{rows}; {', '.join(dtypes)})"
    )
    return 0


def _add_export_task(commands: argparse._SubParsersAction, task: str) -> None:
    parser = commands.add_parser(
        task,
        help=_TASK_HELP[task],
        description=f"Join {_TASK_HELP[task]} on the four OC20 test splits into one {task} "
        "leaderboard file. Each split is a .npz file, or a folder holding a single "
        f"{INPUT_NAMES[task]} (in itself, a sub-folder, or results/*/). The file is checked "
        "like `ocp-graphpar validate` before it is renamed into place.",
    )
    for split in SPLITS:
        parser.add_argument(
            option(split),
            dest=split,
            required=True,
            metavar="PATH",
            help=f"predictions on the {split} test split (file or folder)",
        )
    parser.add_argument("--out", required=True, metavar="FILE", help="submission (.npz) to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace FILE if it exists (once the new is valid)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="cast energies/forces/positions (default: keep the dtype fairchem wrote)",
    )
    parser.set_defaults(handler=run_export, task=task)


def add_export_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export {s2ef,is2rs,is2re}`` and ``validate`` to a top-level sub-command group."""
    export = subparsers.add_parser(
        "export",
        help="make an OC20 leaderboard submission from fairchem predictions",
        description="Join fairchem-core 1.x prediction files of the OC20 test splits (id, "
        "ood_ads, ood_cat, ood_both) into one leaderboard submission (.npz), written atomically.",
    )
    tasks = export.add_subparsers(dest="export_task", required=True, metavar="TASK")
    for task in TASKS:
        _add_export_task(tasks, task)

    validate = subparsers.add_parser(
        "validate",
        help="check an OC20 leaderboard submission file",
        description="Check a submission (.npz) and list every defect with its fix. Exit status: "
        "0 valid, 1 defects found, 2 file missing or unreadable.",
    )
    validate.add_argument("file", metavar="FILE", help="submission .npz")
    validate.add_argument("--task", required=True, choices=TASKS, help="leaderboard task")
    validate.set_defaults(handler=run_validate)
