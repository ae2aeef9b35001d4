"""Writing LMDB folders that fairchem's ``LmdbDataset`` reads, and staging output atomically.

Each LMDB folder holds ``data.lmdb`` (pickled ``Data`` under ascii keys ``"0"``, ``"1"``, ...
plus a pickled ``"length"`` entry) and ``metadata.npz`` (``natoms``: (N,) int64 atom counts in
dataset order, which fairchem's balanced batch sampler needs).

A whole dataset is written inside a hidden temporary sibling of the output folder and renamed into
place only when complete (:func:`staged_output`), so an interrupted run never leaves a half-written
dataset where a later training run would find it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb
import numpy as np
from torch_geometric.data import Data
from tqdm import tqdm

from ocp_graphpar.errors import UserFacingError

LMDB_FILE = "data.lmdb"
METADATA_FILE = "metadata.npz"
#: Every dataset folder we write holds this manifest; --overwrite only replaces such folders.
MANIFEST_FILE = "dataset.json"

_COMMIT_EVERY = 256  # samples per write transaction: bounded memory, few commits
_INITIAL_MAP_SIZE = 64 << 20  # bytes; doubled whenever a transaction does not fit


def _put_batch(env: lmdb.Environment, items: list[tuple[bytes, bytes]]) -> None:
    """Write items in one transaction, growing the memory map until they fit."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def write_lmdb(
    folder: str | Path,
    samples: Iterable[Data],
    total: int | None = None,
    desc: str = "writing",
    progress: bool = True,
) -> np.ndarray:
    """Write ``samples`` to ``folder/data.lmdb`` and ``folder/metadata.npz``.

    Returns ``natoms``: (N,) int64, the atom count of every sample in the order written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    natoms: list[int] = []
    # lock=False: the folder is private to this run until it is renamed into place.
    env = lmdb.open(
        str(folder / LMDB_FILE), map_size=_INITIAL_MAP_SIZE, subdir=False, meminit=False, lock=False
    )
    try:
        pending: list[tuple[bytes, bytes]] = []
        bar = tqdm(
            samples, total=total, desc=desc, unit="sample", disable=None if progress else True
        )
        for sample in bar:
            pending.append((str(len(natoms)).encode("ascii"), pickle.dumps(sample, protocol=-1)))
            natoms.append(int(sample.natoms))
            if len(pending) >= _COMMIT_EVERY:
                _put_batch(env, pending)
                pending = []
        pending.append((b"length", pickle.dumps(len(natoms), protocol=-1)))
        _put_batch(env, pending)
        env.sync()
    finally:
        env.close()
    natoms_array = np.asarray(natoms, dtype=np.int64)
    np.savez(folder / METADATA_FILE, natoms=natoms_array)
    return natoms_array


def check_output_target(out: str | Path, overwrite: bool) -> Path:
    """Refuse an output path that cannot be (re)placed; return it absolute.

    Called before any slow work so a wrong ``--out`` fails in the first second.
    """
    out = Path(out).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UserFacingError(
                f"output folder {out} already exists. Pass --overwrite to replace it, "
                "or choose another --out."
            )
        if not out.is_dir() or out.is_symlink():
            raise UserFacingError(
                f"{out} exists and is not a folder; --overwrite only replaces dataset folders. "
                "Remove it yourself or choose another --out."
            )
        # Guard against `--out ~ --overwrite`: only replace empty folders or our own datasets.
        if any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
            raise UserFacingError(
                f"{out} exists and is not a dataset written by ocp-graphpar (no {MANIFEST_FILE}); "
                "--overwrite will not replace it. Remove it yourself or choose another --out."
            )
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise UserFacingError(f"cannot create {out}: {parent} is not a folder.")
    return out


@contextlib.contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out``.

    On any exception (KeyboardInterrupt included) the temporary folder is deleted and ``out`` is
    left as it was. With ``overwrite``, an existing ``out`` is moved aside only after the new
    dataset is complete, and deleted after the new one is in place.
    """
    out = check_output_target(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # A plain mkdir (not tempfile.mkdtemp, which is 0700) so the result honours the umask.
        staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
    except OSError as error:
        raise UserFacingError(
            f"cannot write beside {out} ({error.strerror}). Choose an --out in a writable folder."
        ) from error
    try:
        yield staging
        # Re-check: another process may have created `out` while we were writing.
        check_output_target(out, overwrite)
        retired = None
        if out.exists():
            retired = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, retired)
        try:
            os.replace(staging, out)
        except BaseException:
            if retired is not None:
                os.replace(retired, out)
            raise
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write the dataset manifest (``dataset.json``) describing options, splits and systems."""
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
