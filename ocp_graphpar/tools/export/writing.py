"""Assembling OC20 leaderboard submissions from fairchem 1.x predictions, and writing them.

The inputs are what fairchem-core 1.10 writes: ``results/<timestamp>/ocp_predictions.npz`` (or the
legacy ``s2ef_predictions.npz`` / ``is2re_predictions.npz``) from ``--mode predict``, and
``results/<timestamp>/relaxed_positions.npz`` from ``--mode run-relaxations`` with
``task.write_pos: True``. fairchem 1.10 stores system-level predictions as (n, 1), so export
flattens ``energy`` to (n,); everything else is copied as written (float16 by default), unless a
``dtype`` is asked for. The output is laid out as :mod:`~ocp_graphpar.tools.export.layout`
describes.

:func:`export_submission` writes the file atomically: a temporary file beside it, checked with
:func:`~ocp_graphpar.tools.export.validation.validate_submission`, then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.export.layout import (
    DTYPES,
    FRAME_ID,
    SPLITS,
    TASK_KEYS,
    check_task,
    option,
)
from ocp_graphpar.tools.export.validation import (
    examples,
    load_submission,
    plural,
    validate_submission,
)

#: What fairchem writes for each task, looked for inside a folder given as input.
INPUT_NAMES = {
    "s2ef": "*_predictions.npz",
    "is2re": "*_predictions.npz",
    "is2rs": "relaxed_positions.npz",
}
INPUT_HINTS = {
    "s2ef": "fairchem --mode predict with a model predicting energy and forces",
    "is2re": "fairchem --mode predict with an energy model (one energy per system)",
    "is2rs": "fairchem --mode run-relaxations with task.write_pos: True",
}


def resolve_prediction_file(task: str, path: str | Path) -> Path:
    """A prediction file, or the single one fairchem wrote inside a folder.

    A folder is searched for ``*_predictions.npz`` (``relaxed_positions.npz`` for IS2RS) in itself,
    its sub-folders and ``results/*/`` (fairchem's ``results/<timestamp>/``), skipping hidden
    folders such as the ``.partial`` staging folder of an unfinished write.
    """
    check_task(task)
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserFacingError(f"{path} not found.")
    name = INPUT_NAMES[task]
    found = sorted(
        {
            match
            for pattern in (name, f"*/{name}", f"results/*/{name}")
            for match in path.glob(pattern)
            if match.is_file() and not any(p.startswith(".") for p in match.relative_to(path).parts)
        }
    )
    if not found:
        raise UserFacingError(
            f"no {name} in {path}, its sub-folders or {path}/results/*/; run "
            f"{INPUT_HINTS[task]}, or pass the prediction file itself."
        )
    if len(found) > 1:
        listed = ", ".join(str(match.relative_to(path)) for match in found)
        raise UserFacingError(f"several {name} in {path} ({listed}); pass one file.")
    return found[0]


def read_predictions(
    task: str, path: str | Path, dtype: str | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """One split's arrays for ``task``, converted as a submission stores them.

    Returns ``(arrays, notes)``: the task's keys (:data:`TASK_KEYS`) and lines describing what
    was changed or left out. ``energy`` (n, 1) becomes (n,); for IS2RE, ``"{sid}_{fid}"`` ids
    with one frame per system become ``"{sid}"``; with ``dtype`` the values are cast.
    """
    path = Path(path)
    loaded, defects = load_submission(path)
    if defects:
        raise UserFacingError(f"{path}: {'; '.join(d.problem + f' ({d.key})' for d in defects)}.")
    names = TASK_KEYS[task]
    missing = [name for name in names if name not in loaded]
    if missing:
        raise UserFacingError(
            f"{path} has no {', '.join(missing)} (it has: {', '.join(loaded) or 'nothing'}); an "
            f"{task} export needs {', '.join(names)}, written by {INPUT_HINTS[task]}."
        )
    arrays = {name: loaded[name] for name in names}
    ignored = sorted(set(loaded) - set(names))
    notes = [f"ignored {', '.join(ignored)}"] if ignored else []
    energy = arrays.get("energy")
    if energy is not None and energy.ndim == 2 and energy.shape[1] == 1:
        arrays["energy"] = energy.reshape(-1)
        notes.append("flattened energy (n, 1) -> (n,)")
    if task == "is2re":
        arrays["ids"], id_notes = _system_ids(arrays["ids"], path)
        notes += id_notes
    if dtype is not None:
        for name in ("energy", "forces", "pos"):
            if name in arrays:
                arrays[name] = arrays[name].astype(dtype)
    return arrays, notes


def _system_ids(ids: np.ndarray, path: Path) -> tuple[np.ndarray, list[str]]:
    """IS2RE ids: ``"{sid}_{fid}"`` -> ``"{sid}"``, refused when a sid has several frames."""
    texts = ids.astype(str).reshape(-1)
    if ids.ndim != 1 or not any(FRAME_ID.fullmatch(text) for text in texts):
        return ids, []  # left to validation
    sids = np.array([text.split("_")[0] if FRAME_ID.fullmatch(text) else text for text in texts])
    unique, counts = np.unique(sids, return_counts=True)
    if (counts > 1).any():
        several = unique[counts > 1]
        raise UserFacingError(
            f"{path} has several {{sid}}_{{fid}} predictions for {plural(several.size, 'system')} "
            f"({examples(several)}); IS2RE wants one energy per system: pass IS2RE predictions "
            "(one per sid), or predictions on the relaxed frames only."
        )
    return sids, ["ids {sid}_{fid} -> {sid} (one frame per system)"]


def collect_predictions(
    task: str, split_files: Mapping[str, str | Path], dtype: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The submission arrays (``{split}_{key}``) from one prediction file or folder per split.

    Returns ``(arrays, notes)``, ``notes[split]`` listing each split's file and conversions.
    """
    check_task(task)
    if dtype is not None and dtype not in DTYPES:
        raise UserFacingError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    unknown = sorted(set(split_files) - set(SPLITS))
    missing = [option(split) for split in SPLITS if split_files.get(split) is None]
    if unknown or missing:
        raise UserFacingError(
            f"a submission needs one prediction file per split ({', '.join(map(option, SPLITS))}); "
            + (f"missing {', '.join(missing)}" if missing else f"unknown splits {unknown}")
        )
    files = {split: resolve_prediction_file(task, split_files[split]) for split in SPLITS}
    _refuse_repeated_files(files)
    arrays: dict[str, np.ndarray] = {}
    notes: dict[str, list[str]] = {}
    for split, path in files.items():
        split_arrays, notes[split] = read_predictions(task, path, dtype)
        notes[split].insert(0, str(path))
        arrays.update({f"{split}_{name}": array for name, array in split_arrays.items()})
    return arrays, notes


def _refuse_repeated_files(files: Mapping[str, Path]) -> None:
    seen: dict[Path, str] = {}
    for split, path in files.items():
        resolved = path.resolve()
        if resolved in seen:
            raise UserFacingError(
                f"{option(seen[resolved])} and {option(split)} are the same file ({path}); "
                "each split needs predictions on its own test set."
            )
        seen[resolved] = split


def output_path(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` with ``.npz`` appended if missing, absolute; refused if it exists (unless
    ``overwrite``) or is a folder."""
    out = Path(out).expanduser().absolute()
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    if out.is_dir():
        raise UserFacingError(f"{out} is a folder; choose a file name for --out.")
    if out.exists() and not overwrite:
        raise UserFacingError(f"{out} already exists; pass --overwrite to replace it.")
    return out


def write_submission(
    arrays: Mapping[str, np.ndarray], task: str, out: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``arrays`` to ``out`` (``.npz`` appended if missing) atomically; return its path.

    The file is written beside ``out`` under a temporary name, read back and checked with
    :func:`validate_submission`, and only then renamed to ``out``. On any error (or interrupt)
    the temporary file is removed, so ``out`` is the old file, or the new valid one.
    """
    out = output_path(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            dir=out.parent, prefix=f".{out.name}.", suffix=".partial"
        )
    except OSError as error:
        raise UserFacingError(f"cannot write beside {out} ({error.strerror}).") from error
    try:
        with os.fdopen(descriptor, "wb") as stream:
            np.savez_compressed(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        defects = validate_submission(temporary, task)
        if defects:
            listed = "\n".join(f"  {defect}" for defect in defects)
            raise UserFacingError(f"not writing an invalid {task} submission:\n{listed}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide it from others
        os.replace(temporary, output_path(out, overwrite))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return out


def export_submission(
    task: str,
    split_files: Mapping[str, str | Path],
    out: str | Path,
    *,
    overwrite: bool = False,
    dtype: str | None = None,
) -> Path:
    """Join one fairchem prediction file (or folder) per OC20 test split into a submission.

    ``split_files`` maps each of :data:`SPLITS` to a file or folder (see
    :func:`resolve_prediction_file`). Returns the path written (``out``, ``.npz`` appended if
    missing). Raises :class:`UserFacingError` for bad input, an existing ``out`` without
    ``overwrite``, or a result that would not pass :func:`validate_submission`.
    """
    output_path(out, overwrite)  # fail before reading anything
    arrays, _ = collect_predictions(task, split_files, dtype)
    return write_submission(arrays, task, out, overwrite=overwrite)
