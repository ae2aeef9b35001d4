"""Leaderboard files from the demo's single validation split.

An OC20 submission holds predictions on four test splits (``id``, ``ood_ads``, ``ood_cat``,
``ood_both``) with no system in two of them, and ``ocp-graphpar export`` takes one fairchem
prediction file per split. The demo has one held-out split, so its systems are dealt out to the
four split names in turn (sorted by system id), each split file written in fairchem's own layout.
The result has the leaderboard's exact format and passes ``ocp-graphpar validate``; it is not a
submission of OC20's test sets, which are not part of the demo.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.export import SPLITS, export_submission, validate_submission
from ocp_graphpar.tools.export.layout import ROWS_KEY
from ocp_graphpar.tools.export.writing import read_predictions


def system_of(prediction_id: str) -> str:
    """``"{sid}_{fid}"`` (S2EF) or ``"{sid}"`` (IS2RS) -> ``"{sid}"``."""
    return str(prediction_id).split("_")[0]


def deal_by_system(predictions: dict[str, np.ndarray], task: str) -> dict[str, dict]:
    """One fairchem-layout prediction dict per OC20 split: the systems of ``predictions`` dealt
    out in turn, rows (forces or positions) following their ids, ``chunk_idx`` recomputed."""
    rows_key = ROWS_KEY[task]
    ids = predictions["ids"]
    rows = np.split(predictions[rows_key], predictions["chunk_idx"])
    systems = sorted({system_of(i) for i in ids}, key=lambda s: (len(s), s))
    if len(systems) < len(SPLITS):
        raise UserFacingError(
            f"the {task} predictions cover {len(systems)} system(s); a leaderboard file needs "
            f"one per split ({len(SPLITS)}). Give the demo at least {len(SPLITS)} validation "
            "systems (more trajectories, or a larger --val-fraction)."
        )
    turn = {system: k % len(SPLITS) for k, system in enumerate(systems)}
    dealt = {}
    for k, split in enumerate(SPLITS):
        mine = [i for i, name in enumerate(ids) if turn[system_of(name)] == k]
        arrays = {
            "ids": ids[mine],
            rows_key: np.concatenate([rows[i] for i in mine]),
            "chunk_idx": np.cumsum([len(rows[i]) for i in mine])[:-1],
        }
        if "energy" in predictions:
            arrays["energy"] = predictions["energy"][mine]
        dealt[split] = arrays
    return dealt


def write_split_files(dealt: dict[str, dict], folder: str | os.PathLike, name: str) -> dict:
    """``folder/<split>/<name>`` for each split, as ``np.savez_compressed`` (fairchem's format)."""
    files = {}
    for split, arrays in dealt.items():
        path = Path(folder) / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        files[split] = path
    return files


def leaderboard_file(
    task: str, predictions_file: str | os.PathLike, work: str | os.PathLike, out: str | os.PathLike
) -> Path:
    """Deal fairchem's ``predictions_file`` over the four splits (files under ``work``), join
    them with :func:`~ocp_graphpar.tools.export.export_submission` into ``out`` (atomic), and
    check the result with :func:`~ocp_graphpar.tools.export.validate_submission`."""
    loaded, _ = read_predictions(task, predictions_file)  # the task's keys, energy flattened
    dealt = deal_by_system(loaded, task)
    name = Path(predictions_file).name
    files = write_split_files(dealt, work, name)
    path = export_submission(task, files, out, overwrite=True)
    defects = validate_submission(path, task)
    if defects:  # export validates before renaming; this re-reads what landed on disk
        raise RuntimeError(f"{path} failed validation: " + "; ".join(map(str, defects)))
    return path
