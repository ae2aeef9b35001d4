"""Reading and checking OC20 leaderboard submissions: what is refused, why, and how to fix it.

:func:`load_submission` reads an ``.npz`` without pickle, :func:`check_submission` lists every
:class:`Defect` of loaded arrays against the layout of :mod:`~ocp_graphpar.tools.export.layout`,
and :func:`validate_submission` does both. Only an unknown task or an unreadable file raises
:class:`~ocp_graphpar.errors.UserFacingError`: the defects of a readable file are all listed
together, so that a single run names every fix.
"""

from __future__ import annotations

import difflib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.export.layout import (
    FRAME_ID,
    ROWS_KEY,
    SPLITS,
    TASK_KEYS,
    check_task,
    option,
)

_EXAMPLES = 3
_FLOAT_FIX = "store it as float16, float32 or float64, e.g. array.astype(np.float32)"
_CHUNK_FIX = "recompute it as np.cumsum(rows_per_system)[:-1], in the order of the ids"
_NONFINITE_FIX = (
    "re-predict after fixing the model (diverged?); with float16, values beyond +-65504 "
    "overflow to inf: predict with --task.prediction_dtype=float32 or export --dtype float32"
)


@dataclass(frozen=True)
class Defect:
    """One problem of a submission: where it is (``split``, ``key``), what, and how to fix it."""

    split: str | None
    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.split or '?'}] {self.key}: {self.problem} -- fix: {self.fix}"


def _split_of(key: str) -> tuple[str | None, str]:
    """``"ood_ads_ids"`` -> ``("ood_ads", "ids")``; ``(None, key)`` without a known split."""
    for split in sorted(SPLITS, key=len, reverse=True):
        if key.startswith(split + "_"):
            return split, key[len(split) + 1 :]
    return None, key


def plural(count: int, noun: str) -> str:
    """``plural(2, "id")`` -> ``"2 ids"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def examples(values) -> str:
    """The first few ``values``, quoted if strings, with ``...`` when some are left out."""
    shown = ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in values[:_EXAMPLES])
    return f"e.g. {shown}" if len(values) <= _EXAMPLES else f"e.g. {shown}, ..."


# --------------------------------------------------------------------------- reading


def load_submission(path: str | Path) -> tuple[dict[str, np.ndarray | None], list[Defect]]:
    """Read every array of an ``.npz`` file (no pickle).

    Returns ``(arrays, defects)``: an array that cannot be read without pickle (an object array)
    is a :class:`Defect` and maps to ``None``. Raises :class:`UserFacingError` when the file is
    missing or is not a readable ``.npz`` archive.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserFacingError(f"{path} {'is not a file' if path.exists() else 'not found'}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserFacingError(f"cannot read {path} as an .npz archive ({error}).") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserFacingError(f"{path} holds a single array (.npy), not an .npz of named arrays.")
    arrays: dict[str, np.ndarray | None] = {}
    defects: list[Defect] = []
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                if "allow_pickle" not in str(error):
                    raise UserFacingError(f"cannot read {key} of {path} ({error}).") from error
                arrays[key] = None
                defects.append(_pickled(key))
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                raise UserFacingError(f"{path} is corrupt: {key} fails ({error}).") from error
    return arrays, defects


def _pickled(key: str) -> Defect:
    return Defect(
        _split_of(key)[0],
        key,
        "holds Python objects (a pickled object array)",
        "store a plain numpy array, e.g. np.asarray(ids, dtype=str) or np.concatenate(values)",
    )


# --------------------------------------------------------------------------- checks


def validate_submission(
    submission: str | Path | Mapping[str, np.ndarray | None], task: str
) -> list[Defect]:
    """Every defect of a submission (an ``.npz`` path, or its arrays by key); ``[]`` if valid."""
    check_task(task)
    if isinstance(submission, Mapping):
        arrays = {k: None if v is None else np.asarray(v) for k, v in submission.items()}
        return check_submission(arrays, task)
    arrays, defects = load_submission(submission)
    return defects + check_submission(arrays, task)


def check_submission(arrays: Mapping[str, np.ndarray | None], task: str) -> list[Defect]:
    """Every defect of loaded arrays (``None``: present but unreadable, reported elsewhere)."""
    check_task(task)
    defects = _key_defects(arrays, task)
    for split in SPLITS:
        defects += _split_defects(split, arrays, task)
    return defects + _shared_id_defects(arrays)


def _key_defects(arrays: Mapping[str, object], task: str) -> list[Defect]:
    """Missing splits, missing keys and unexpected keys."""
    names = TASK_KEYS[task]
    defects = []
    for split in SPLITS:
        missing = [f"{split}_{name}" for name in names if f"{split}_{name}" not in arrays]
        if len(missing) == len(names):
            key = f"{split}_{{{','.join(names)}}}"
            fix = f"export predictions on the OC20 {split} test split, passed as {option(split)}"
            defects.append(Defect(split, key, f"the {split} split is missing", fix))
            continue
        for key in missing:
            fix = f"add it: an {task} submission needs {', '.join(names)} for every split"
            defects.append(Defect(split, key, "missing key", fix))
    expected = {f"{split}_{name}" for split in SPLITS for name in names}
    return defects + [_unexpected(key, task) for key in sorted(set(arrays) - expected)]


def _unexpected(key: str, task: str) -> Defect:
    split, name = _split_of(key)
    if split is None:
        prefix = key
        for known in sorted({n for names in TASK_KEYS.values() for n in names}, key=len):
            if key.endswith("_" + known):
                prefix, name = key[: -len(known) - 1], known
        close = difflib.get_close_matches(prefix, SPLITS, n=1)
        fix = f"rename it to {close[0]}_{name}" if close else "rename it to <split>_<key>"
        problem = f"unexpected key: no split is named {prefix!r} (splits: {', '.join(SPLITS)})"
        return Defect(None, key, problem, f"{fix}, or remove it")
    owners = [other for other, names in TASK_KEYS.items() if name in names]
    if owners:
        problem = f"unexpected key: {name} belongs to {'/'.join(owners)} submissions, not {task}"
        return Defect(split, key, problem, f"remove it (or validate with --task {owners[0]}?)")
    return Defect(split, key, f"unexpected key (not part of an {task} submission)", "remove it")


def _split_defects(split: str, arrays: Mapping[str, np.ndarray | None], task: str) -> list[Defect]:
    """Defects of one split's arrays, alone and against each other."""
    ids = arrays.get(f"{split}_ids")
    defects = [] if ids is None else _id_defects(split, ids, task)
    n = len(ids) if ids is not None and ids.ndim == 1 else None
    if n == 0:
        fix = f"export predictions on all systems of the {split} split"
        return [*defects, Defect(split, f"{split}_ids", "empty split (0 systems)", fix)]
    energy = arrays.get(f"{split}_energy")
    if "energy" in TASK_KEYS[task] and energy is not None:
        defects += _energy_defects(split, energy, ids, n)
    rows_key = ROWS_KEY.get(task)
    values = None if rows_key is None else arrays.get(f"{split}_{rows_key}")
    chunk = arrays.get(f"{split}_chunk_idx") if rows_key else None
    n_rows = len(values) if values is not None and values.ndim >= 1 else None
    bounds = None
    if chunk is not None:
        chunk_defects, bounds = _chunk_defects(split, chunk, n, n_rows, rows_key)
        defects += chunk_defects or _empty_system_defects(split, bounds, ids, rows_key)
    if values is not None:
        defects += _row_defects(split, rows_key, values, ids, bounds)
    return defects


def _id_defects(split: str, ids: np.ndarray, task: str) -> list[Defect]:
    key = f"{split}_ids"
    if ids.ndim != 1:
        return [Defect(split, key, f"has shape {ids.shape}, not (n,)", "store a 1-D array of ids")]
    defects = []
    if ids.dtype.kind != "U":
        fix = "store them as numpy strings: np.asarray([str(i) for i in ids])"
        defects.append(Defect(split, key, f"has dtype {ids.dtype}, not str", fix))
    texts = ids.astype(str)
    unique, counts = np.unique(texts, return_counts=True)
    repeated = unique[counts > 1]
    if repeated.size:
        problem = f"{plural(repeated.size, 'id')} more than once ({examples(repeated)})"
        defects.append(Defect(split, key, problem, "keep one prediction per id"))
    framed = np.array([FRAME_ID.fullmatch(text) is not None for text in texts], dtype=bool)
    if task == "s2ef" and not framed.all():
        malformed = texts[~framed]
        problem = (
            f"{plural(malformed.size, 'id')} not of the form {{sid}}_{{fid}} "
            f"({examples(malformed)})"
        )
        fix = "write ids as f'{sid}_{fid}', as fairchem's predict does for S2EF data"
        defects.append(Defect(split, key, problem, fix))
    elif task != "s2ef" and framed.any():
        problem = (
            f"{plural(int(framed.sum()), 'id')} of the form {{sid}}_{{fid}} "
            f"({examples(texts[framed])})"
        )
        fix = f"{task} ids are system ids f'{{sid}}', one per system (export {task} converts them)"
        defects.append(Defect(split, key, problem, fix))
    return defects


def _energy_defects(
    split: str, energy: np.ndarray, ids: np.ndarray | None, n: int | None
) -> list[Defect]:
    key = f"{split}_energy"
    defects = []
    if energy.dtype.kind != "f":
        defects.append(Defect(split, key, f"has dtype {energy.dtype}, not floating", _FLOAT_FIX))
    if energy.ndim == 2 and energy.shape[1] == 1:
        fix = "flatten energy to shape (n,): energy.reshape(-1)"
        defects.append(Defect(split, key, f"has shape {energy.shape}", fix))
    elif energy.ndim != 1:
        fix = "store one energy per id, shape (n,)"
        defects.append(Defect(split, key, f"has shape {energy.shape}, not (n,)", fix))
    if energy.ndim >= 1 and n is not None and len(energy) != n:
        problem = f"has {len(energy)} values for {n} ids"
        fix = f"write one energy per id, in the order of {split}_ids"
        defects.append(Defect(split, key, problem, fix))
    if energy.ndim >= 1:
        owners = np.arange(len(energy)) if len(energy) == n else None
        defects += _finite_defects(split, key, energy, ids, owners)
    return defects


def _chunk_defects(
    split: str, chunk: np.ndarray, n: int | None, n_rows: int | None, rows_key: str
) -> tuple[list[Defect], np.ndarray | None]:
    """Defects of ``chunk_idx`` and, when it is sound, the ``(n + 1,)`` row bounds of systems."""
    key = f"{split}_chunk_idx"
    defects = []
    if chunk.dtype.kind not in "iu":
        fix = "store it as integers: chunk_idx.astype(np.int64)"
        defects.append(Defect(split, key, f"has dtype {chunk.dtype}, not integer", fix))
    if chunk.ndim != 1:
        defects.append(Defect(split, key, f"has shape {chunk.shape}, not (n - 1,)", _CHUNK_FIX))
        return defects, None
    if chunk.dtype.kind not in "iuf" or not np.isfinite(chunk).all() or (chunk % 1 != 0).any():
        return defects, None  # no integer values to check
    values = chunk.astype(np.int64)
    if n is not None and len(values) != n - 1:
        problem = f"has {len(values)} entries for {n} ids; needs len(ids) - 1 = {n - 1}"
        defects.append(Defect(split, key, problem, _CHUNK_FIX))
    drops = np.flatnonzero(np.diff(values) < 0)
    if drops.size:
        problem = f"decreases at {plural(drops.size, 'place')} (first after index {drops[0]})"
        defects.append(Defect(split, key, problem, _CHUNK_FIX))
    outside = values[(values < 0) | (values > (np.inf if n_rows is None else n_rows))]
    if outside.size:
        allowed = "[0, ...)" if n_rows is None else f"[0, {n_rows}] ({n_rows} {rows_key} rows)"
        problem = f"{plural(outside.size, 'value')} outside {allowed}: {examples(outside)}"
        defects.append(Defect(split, key, problem, _CHUNK_FIX))
    if defects or n is None or n_rows is None:
        return defects, None
    return [], np.concatenate([[0], values, [n_rows]])


def _empty_system_defects(
    split: str, bounds: np.ndarray | None, ids: np.ndarray | None, rows_key: str
) -> list[Defect]:
    """Systems given no rows by ``bounds`` (every system has atoms, and free atoms in OC20)."""
    empty = np.array([], dtype=np.int64) if bounds is None else np.flatnonzero(np.diff(bounds) == 0)
    if not empty.size:
        return []
    atoms = "free atoms (fixed == 0)" if rows_key == "forces" else "atoms"
    named = examples(ids[empty].astype(str)) if ids is not None else examples(empty)
    problem = f"gives {plural(empty.size, 'system')} no {rows_key} rows ({named})"
    return [Defect(split, f"{split}_chunk_idx", problem, f"every system has {atoms}; {_CHUNK_FIX}")]


def _row_defects(
    split: str,
    rows_key: str,
    values: np.ndarray,
    ids: np.ndarray | None,
    bounds: np.ndarray | None,
) -> list[Defect]:
    """Dtype, shape and finiteness of forces/pos; ``bounds``: (n + 1,) system row bounds."""
    key = f"{split}_{rows_key}"
    defects = []
    if values.dtype.kind != "f":
        defects.append(Defect(split, key, f"has dtype {values.dtype}, not floating", _FLOAT_FIX))
    if values.ndim != 2 or values.shape[1] != 3:
        fix = f"concatenate the per-system (atoms, 3) arrays: np.concatenate({rows_key}_list)"
        return [*defects, Defect(split, key, f"has shape {values.shape}, not (rows, 3)", fix)]
    owners = None
    if bounds is not None:
        owners = np.searchsorted(bounds, np.arange(len(values)), side="right") - 1
    return defects + _finite_defects(split, key, values, ids, owners)


def _finite_defects(
    split: str, key: str, values: np.ndarray, ids: np.ndarray | None, owners: np.ndarray | None
) -> list[Defect]:
    """NaN and inf values of ``values`` ((rows,) or (rows, k)); ``owners``: system of each row."""
    if values.dtype.kind != "f" or np.isfinite(values).all():
        return []
    nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if owners is not None and ids is not None:
        systems = np.unique(owners[rows])
        where = f"in {plural(systems.size, 'system')} ({examples(ids[systems])})"
    else:
        where = f"in rows {examples(rows)}"
    problem = f"{plural(nan + inf, 'non-finite value')} ({nan} NaN, {inf} inf) {where}"
    return [Defect(split, key, problem, _NONFINITE_FIX)]


def _shared_id_defects(arrays: Mapping[str, np.ndarray | None]) -> list[Defect]:
    """An id in two splits: each OC20 test system belongs to exactly one split."""
    defects = []
    for i, split in enumerate(SPLITS):
        for other in SPLITS[:i]:
            ids, other_ids = arrays.get(f"{split}_ids"), arrays.get(f"{other}_ids")
            if ids is None or other_ids is None or ids.ndim != 1 or other_ids.ndim != 1:
                continue
            shared = np.intersect1d(ids.astype(str), other_ids.astype(str))
            if shared.size:
                problem = (
                    f"{plural(shared.size, 'id')} also in the {other} split ({examples(shared)})"
                )
                fix = f"{option(split)} and {option(other)} must be predictions on different splits"
                defects.append(Defect(split, f"{split}_ids", problem, fix))
    return defects
