"""Reading ASE trajectory files into :class:`~ocp_graphpar.tools.data.samples.System` objects.

Any format ``ase.io.read(path, ":")`` understands works (``.traj``, ASE ``.json``/``.db``
databases, extended XYZ with energies and forces). One file is one relaxation of one system; the
system is named after the file (``random1000100.traj`` -> ``random1000100``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import ase.io
from ase import Atoms
from tqdm import tqdm

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.data.samples import System, system_from_frames


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files to read: the given files, and the ``*.traj`` files inside any given folder."""
    if not paths:
        raise UserFacingError("no input files given. Pass one or more trajectory files.")
    files: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise UserFacingError(f"{path} does not exist. Check the path (typo? not mounted?).")
        if path.is_dir():
            found = sorted(path.glob("*.traj"))
            if not found:
                raise UserFacingError(
                    f"folder {path} holds no *.traj files. Pass the trajectory files themselves."
                )
            files.extend(found)
        elif not os.access(path, os.R_OK):
            raise UserFacingError(
                f"{path} is not readable (permission denied). Fix its permissions or copy it."
            )
        else:
            files.append(path)
    return files


def read_frames(path: str | os.PathLike) -> list[Atoms]:
    """All frames of one file, or a UserFacingError saying why it cannot be read."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserFacingError(
            f"{path} is empty (0 bytes); it was probably not written completely. "
            "Re-create it or leave it out."
        )
    try:
        frames = ase.io.read(str(path), index=":")
    except PermissionError as error:
        raise UserFacingError(f"{path} is not readable ({error.strerror}).") from error
    except Exception as error:  # ASE raises many types for corrupt or unknown files
        raise UserFacingError(
            f"could not read {path} with ase.io.read ({type(error).__name__}: {error}). "
            "Pass an ASE-readable trajectory (.traj, ASE .json/.db, extended .xyz); check "
            "that the file is complete and its extension matches its format."
        ) from error
    if isinstance(frames, Atoms):
        frames = [frames]
    return list(frames)


def _check_unique_names(files: Sequence[Path]) -> None:
    """System names come from file stems, so two inputs must not share one."""
    seen: dict[str, Path] = {}
    for path in files:
        previous = seen.setdefault(path.stem, path)
        if previous is path:
            continue
        if previous.resolve() == path.resolve():
            raise UserFacingError(f"{path} is given twice. Pass each file once.")
        raise UserFacingError(
            f"{previous} and {path} would both be system '{path.stem}' (names come from file "
            "names). Rename one of them."
        )


def read_trajectories(paths: Sequence[str | os.PathLike], progress: bool = True) -> list[System]:
    """Read and check every input; one :class:`System` per file, named after the file stem.

    Folders in ``paths`` contribute their ``*.traj`` files. Raises
    :class:`~ocp_graphpar.errors.UserFacingError` for a missing, unreadable or empty file, a
    frame without energy or forces, or two inputs with the same name.
    """
    files = expand_inputs(paths)
    _check_unique_names(files)
    systems = []
    for path in tqdm(files, desc="reading", unit="file", disable=None if progress else True):
        systems.append(system_from_frames(path.stem, read_frames(path), source=str(path)))
    return systems
