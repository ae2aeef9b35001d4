"""Looking at an LMDB folder before training reads it: files, layout, targets, finite values.

:func:`survey_folder` raises one :class:`~ocp_graphpar.errors.UserFacingError` naming the
folder, the keys found and the keys expected, for each way a folder can be unusable: missing,
empty, samples of neither layout, layouts mixed across files, targets the run needs absent,
energies, forces or positions that are not finite.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np
import torch
from fairchem.core.common.utils import pyg2_data_transform
from torch_geometric.data import Data

from ocp_graphpar.datasets.layouts import (
    ENERGY_TARGETS,
    INPUT_KEYS,
    UNLABELLED,
    Layout,
    detect_layout,
    expected_keys_text,
)
from ocp_graphpar.errors import UserFacingError

#: Samples whose values are checked for NaN/inf by default: evenly spaced over the folder,
#: plus the first and last of every file. Enough to catch a bad conversion, cheap at any size.
DEFAULT_SAMPLES = 256
#: fairchem-name targets whose values must be finite, where a sample has them.
FINITE_KEYS = ("energy", "forces", "energy_relaxed", "pos", "pos_relaxed")


@dataclass(frozen=True)
class FolderSurvey:
    """What a dataset folder (or single ``.lmdb`` file) holds.

    Attributes:
        path: the folder or file.
        files: its ``.lmdb`` files, in the order fairchem's ``LmdbDataset`` reads them.
        counts: samples per file.
        layout: the layout every file shares.
        keys: the stored keys of the first sample.
    """

    path: Path
    files: tuple[Path, ...]
    counts: tuple[int, ...]
    layout: Layout
    keys: frozenset[str]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)


def lmdb_files(path: Path) -> list[Path]:
    """The ``.lmdb`` files fairchem reads for ``src: path`` (a file, or a folder's files)."""
    return [path] if path.is_file() else sorted(path.glob("*.lmdb"))


def open_lmdb(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_readers=1)


def sample_count(env: lmdb.Environment) -> int:
    """Samples in one LMDB, as fairchem counts them (its ``length`` entry, else its entries)."""
    with env.begin() as txn:
        length = txn.get(b"length")
    return int(pickle.loads(length)) if length is not None else int(env.stat()["entries"])


def read_sample(env: lmdb.Environment, index: int) -> Data:
    """Sample ``index`` as fairchem's ``LmdbDataset`` unpickles it (old PyG objects converted)."""
    with env.begin() as txn:
        raw = txn.get(str(index).encode("ascii"))
    if raw is None:
        raise KeyError(index)
    return pyg2_data_transform(pickle.loads(raw))


def survey_folder(
    path: str | Path,
    *,
    where: str,
    needs: Iterable[str] = (),
    energy_target: str = "frame",
    check_samples: int = DEFAULT_SAMPLES,
) -> FolderSurvey:
    """Survey ``path`` and refuse it, with one message, if a run cannot use it.

    Args:
        path: a dataset folder of ``*.lmdb`` files, or one ``.lmdb`` file.
        where: how the message names the setting (``"dataset.train.src"``).
        needs: targets the run reads, by fairchem name (``"energy"``, ``"forces"``).
        energy_target: ``"frame"`` (the sample's own energy) or ``"relaxed"`` (IS2RE's target).
        check_samples: how many samples, spread over the folder, to check for NaN and inf.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserFacingError(
            f"{where}: {path} does not exist. Check the path (typo? not mounted?)."
        )
    files = lmdb_files(path)
    if not files:
        found = sorted(p.name for p in path.iterdir())[:8]
        raise UserFacingError(
            f"{where}: folder {path} holds no .lmdb files (found: {', '.join(found) or 'nothing'}). "
            "Point it at a folder of LMDBs (ocp-graphpar data, or OC20's s2ef/is2re downloads)."
        )
    envs = [open_lmdb(file) for file in files]
    try:
        counts = tuple(sample_count(env) for env in envs)
        if sum(counts) == 0:
            raise UserFacingError(
                f"{where}: the LMDBs in {path} ({', '.join(f.name for f in files)}) hold no "
                "samples. Re-create the dataset; it was probably not written completely."
            )
        first = {file: read_sample(env, 0) for file, env, n in zip(files, envs, counts) if n}
        layouts = {file: detect_layout(data.keys()) for file, data in first.items()}
        survey = FolderSurvey(
            path=path,
            files=tuple(files),
            counts=counts,
            layout=_one_layout(layouts, where=where, path=path),
            keys=frozenset(next(iter(first.values())).keys()),
        )
        _check_keys(survey, where=where, needs=needs, energy_target=energy_target)
        for file, index, data in _spread_samples(files, envs, counts, check_samples):
            check_finite(data, survey.layout, where=f"{where}: sample {index} of {file}")
    finally:
        for env in envs:
            env.close()
    return survey


def _one_layout(layouts: dict[Path, Layout], *, where: str, path: Path) -> Layout:
    if len(set(layouts.values())) == 1:
        return next(iter(layouts.values()))
    by_layout: dict[str, list[str]] = {}
    for file, layout in layouts.items():
        by_layout.setdefault(layout.name, []).append(file.name)
    listed = "; ".join(f"{name}: {', '.join(names)}" for name, names in by_layout.items())
    raise UserFacingError(
        f"{where}: folder {path} mixes sample layouts across its files ({listed}). Keep one "
        "layout per folder: move the files of the other layout to a folder of their own."
    )


def _check_keys(
    survey: FolderSurvey, *, where: str, needs: Iterable[str], energy_target: str
) -> None:
    if energy_target not in ENERGY_TARGETS:
        raise UserFacingError(
            f"{where}: energy_target {energy_target!r} is not one of {sorted(ENERGY_TARGETS)}."
        )
    have = survey.layout.fairchem_keys(survey.keys)
    if "energy" in set(needs):
        needs = [key for key in needs if key != "energy"] + [ENERGY_TARGETS[energy_target]]
    missing_inputs = [key for key in INPUT_KEYS if key not in survey.keys]
    missing_targets = [key for key in needs if key not in have]
    if not (missing_inputs or missing_targets):
        return
    found = ", ".join(sorted(survey.keys))
    if missing_inputs:
        problem = f"lack the model inputs {', '.join(missing_inputs)}"
        expected = ", ".join(INPUT_KEYS)
    elif survey.layout is UNLABELLED:
        problem = f"carry no targets in either layout this run reads (it needs {', '.join(needs)})"
        expected = expected_keys_text()
    else:
        stored = {v: k for k, v in survey.layout.renames.items()}
        wanted = ", ".join(stored.get(key, key) for key in missing_targets)
        problem = f"are in the {survey.layout.name} layout but lack {wanted}"
        expected = expected_keys_text()
    raise UserFacingError(
        f"{where}: the samples in {survey.path} {problem}. Keys found: {found}. Keys expected: "
        f"{expected}. Point {where} at a folder with these keys (a training or validation "
        "split for training; a test split only for --mode predict)."
    )


def _spread_samples(
    files: list[Path], envs: list[lmdb.Environment], counts: tuple[int, ...], budget: int
) -> Iterator[tuple[Path, int, Data]]:
    """``budget`` samples evenly spaced over the whole folder, plus each file's first and last."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    chosen = set(np.linspace(0, total - 1, num=min(budget, total), dtype=np.int64).tolist())
    for start, count in zip(starts[:-1], counts):
        if count:
            chosen.update((int(start), int(start) + count - 1))
    for flat in sorted(chosen):
        which = int(np.searchsorted(starts, flat, side="right")) - 1
        local = flat - int(starts[which])
        yield files[which], local, read_sample(envs[which], local)


def check_finite(data: Data, layout: Layout, *, where: str) -> None:
    """Refuse a sample (named by ``where``) whose targets or positions hold NaN or inf."""
    bad = non_finite_keys(data, layout)
    if bad:
        raise UserFacingError(
            f"{where} has non-finite values in {', '.join(bad)} (NaN or inf). Remove or "
            "recompute such samples; training on them gives NaN weights."
        )


def non_finite_keys(data: Data, layout: Layout) -> list[str]:
    """Stored keys of ``data`` whose (fairchem-named) targets or positions hold NaN or inf."""
    stored = {layout.renames.get(key, key): key for key in data.to_dict()}
    bad = []
    for name in FINITE_KEYS:
        if name in stored:
            value = data[stored[name]]
            if value is not None and not torch.isfinite(torch.as_tensor(value)).all():
                bad.append(stored[name])
    return bad
