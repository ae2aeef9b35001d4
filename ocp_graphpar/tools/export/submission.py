"""Export fairchem 1.x prediction files as OC20 leaderboard submissions, and validate them.

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

The inputs are what fairchem-core 1.10 writes: ``results/<timestamp>/ocp_predictions.npz`` (or the
legacy ``s2ef_predictions.npz`` / ``is2re_predictions.npz``) from ``--mode predict``, and
``results/<timestamp>/relaxed_positions.npz`` from ``--mode run-relaxations`` with
``task.write_pos: True``. fairchem 1.10 stores system-level predictions as (n, 1), so export
flattens ``energy`` to (n,); everything else is copied as written (float16 by default), unless a
``dtype`` is asked for.

:func:`export_submission` writes the file atomically (a temporary file beside it, checked with
:func:`check_submission`, then renamed into place); :func:`validate_submission` lists every
:class:`Defect` of an existing file.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
FRAME_ID = re.compile(r"\d+_\d+")  # "{sid}_{fid}", as fairchem writes for samples with a fid
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


def _check_task(task: str) -> None:
    if task not in TASK_KEYS:
        raise UserFacingError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")


def _split_of(key: str) -> tuple[str | None, str]:
    """``"ood_ads_ids"`` -> ``("ood_ads", "ids")``; ``(None, key)`` without a known split."""
    for split in sorted(SPLITS, key=len, reverse=True):
        if key.startswith(split + "_"):
            return split, key[len(split) + 1 :]
    return None, key


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _examples(values) -> str:
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
    _check_task(task)
    if isinstance(submission, Mapping):
        arrays = {k: None if v is None else np.asarray(v) for k, v in submission.items()}
        return check_submission(arrays, task)
    arrays, defects = load_submission(submission)
    return defects + check_submission(arrays, task)


def check_submission(arrays: Mapping[str, np.ndarray | None], task: str) -> list[Defect]:
    """Every defect of loaded arrays (``None``: present but unreadable, reported elsewhere)."""
    _check_task(task)
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
        problem = f"{_plural(repeated.size, 'id')} more than once ({_examples(repeated)})"
        defects.append(Defect(split, key, problem, "keep one prediction per id"))
    framed = np.array([FRAME_ID.fullmatch(text) is not None for text in texts], dtype=bool)
    if task == "s2ef" and not framed.all():
        malformed = texts[~framed]
        problem = (
            f"{_plural(malformed.size, 'id')} not of the form {{sid}}_{{fid}} "
            f"({_examples(malformed)})"
        )
        fix = "write ids as f'{sid}_{fid}', as fairchem's predict does for S2EF data"
        defects.append(Defect(split, key, problem, fix))
    elif task != "s2ef" and framed.any():
        problem = (
            f"{_plural(int(framed.sum()), 'id')} of the form {{sid}}_{{fid}} "
            f"({_examples(texts[framed])})"
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
        problem = f"decreases at {_plural(drops.size, 'place')} (first after index {drops[0]})"
        defects.append(Defect(split, key, problem, _CHUNK_FIX))
    outside = values[(values < 0) | (values > (np.inf if n_rows is None else n_rows))]
    if outside.size:
        allowed = "[0, ...)" if n_rows is None else f"[0, {n_rows}] ({n_rows} {rows_key} rows)"
        problem = f"{_plural(outside.size, 'value')} outside {allowed}: {_examples(outside)}"
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
    named = _examples(ids[empty].astype(str)) if ids is not None else _examples(empty)
    problem = f"gives {_plural(empty.size, 'system')} no {rows_key} rows ({named})"
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
        where = f"in {_plural(systems.size, 'system')} ({_examples(ids[systems])})"
    else:
        where = f"in rows {_examples(rows)}"
    problem = f"{_plural(nan + inf, 'non-finite value')} ({nan} NaN, {inf} inf) {where}"
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
                    f"{_plural(shared.size, 'id')} also in the {other} split ({_examples(shared)})"
                )
                fix = f"{option(split)} and {option(other)} must be predictions on different splits"
                defects.append(Defect(split, f"{split}_ids", problem, fix))
    return defects


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


# --------------------------------------------------------------------------- export


def resolve_prediction_file(task: str, path: str | Path) -> Path:
    """A prediction file, or the single one fairchem wrote inside a folder.

    A folder is searched for ``*_predictions.npz`` (``relaxed_positions.npz`` for IS2RS) in itself,
    its sub-folders and ``results/*/`` (fairchem's ``results/<timestamp>/``), skipping hidden
    folders such as the ``.partial`` staging folder of an unfinished write.
    """
    _check_task(task)
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
            f"{path} has several {{sid}}_{{fid}} predictions for {_plural(several.size, 'system')} "
            f"({_examples(several)}); IS2RE wants one energy per system: pass IS2RE predictions "
            "(one per sid), or predictions on the relaxed frames only."
        )
    return sids, ["ids {sid}_{fid} -> {sid} (one frame per system)"]


def collect_predictions(
    task: str, split_files: Mapping[str, str | Path], dtype: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The submission arrays (``{split}_{key}``) from one prediction file or folder per split.

    Returns ``(arrays, notes)``, ``notes[split]`` listing each split's file and conversions.
    """
    _check_task(task)
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
