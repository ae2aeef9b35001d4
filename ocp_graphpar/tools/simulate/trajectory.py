"""The trajectory of ``ocp-graphpar relax`` / ``md``: an ASE ``.traj`` file that grows a frame at
a time, atomically, and tells a rerun where to go on from.

Each frame carries, in ``atoms.info["ocp_graphpar"]``, the command that wrote it, its step and
what resuming needs beyond the atoms (the random generator's state for Langevin dynamics), so
the frame and that state are replaced together and can never disagree.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.trajectory import Trajectory

from ocp_graphpar.atomic import current_umask, replace_durably
from ocp_graphpar.errors import UserFacingError

#: The ``atoms.info`` key of each frame's record.
RECORD_KEY = "ocp_graphpar"
_FRESH_START = "choose another --out, or delete it to start afresh"


@dataclass(frozen=True)
class LastFrame:
    """Where a trajectory written by an earlier run ends.

    Attributes:
        atoms: its last frame (positions, cell, constraints, momenta), without a calculator.
        step: the step of that frame.
        frames: how many frames the file holds.
        record: the frame's record (``step``, ``command``, ``settings``, ...).
    """

    atoms: Atoms
    step: int
    frames: int
    record: dict[str, Any]


def read_last_frame(path: Path, *, command: str, structure: Atoms) -> LastFrame | None:
    """The end of ``path`` to resume from, ``None`` if it does not exist; refuses a file that
    ``ocp-graphpar {command}`` did not write for ``structure``'s atoms."""
    if not path.exists():
        return None
    try:
        with Trajectory(str(path), "r") as trajectory:
            frames = len(trajectory)
            atoms = trajectory[-1] if frames else None
    except Exception as error:  # ASE raises many kinds for a file that is not a trajectory
        raise UserFacingError(
            f"--out {path} exists but is not a readable ASE trajectory ({error}): {_FRESH_START}."
        ) from None
    if atoms is None:
        raise UserFacingError(f"--out {path} is an empty trajectory: {_FRESH_START}.")
    record = atoms.info.pop(RECORD_KEY, None)
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        # Most likely the input structure itself, which must not be appended to.
        raise UserFacingError(
            f"--out {path} exists and was not written by `ocp-graphpar {command}` (its frames "
            f"carry no step count): {_FRESH_START}."
        )
    if record.get("command") != command:
        raise UserFacingError(
            f"--out {path} holds a trajectory of `ocp-graphpar {record.get('command')}`, not "
            f"of `{command}`: {_FRESH_START}."
        )
    if len(atoms) != len(structure) or not np.array_equal(atoms.numbers, structure.numbers):
        raise UserFacingError(
            f"--out {path} holds a trajectory of another structure ({atoms.get_chemical_formula()}"
            f", {len(atoms)} atoms; the structure file has {structure.get_chemical_formula()}, "
            f"{len(structure)} atoms): {_FRESH_START}."
        )
    atoms.calc = None
    return LastFrame(atoms=atoms, step=record["step"], frames=frames, record=record)


class FrameWriter:
    """Appends frames to a ``.traj`` file, each write atomic: a reader, or a run killed at any
    moment, finds the file as it was before the write or after it, never in between.

    Args:
        path: the trajectory.
        command: ``relax`` or ``md``, recorded in every frame.
        interval: a frame every ``interval`` steps (and the final step).
        frames: frames the file holds already (a resumed run).
        last_step: the step of its last frame, not written again.
        settings: the run's settings, recorded in every frame.
    """

    def __init__(
        self,
        path: Path,
        *,
        command: str,
        interval: int,
        frames: int = 0,
        last_step: int | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.command = command
        self.interval = interval
        self.frames = frames
        self.last_step = last_step
        self.settings = dict(settings or {})
        path.parent.mkdir(parents=True, exist_ok=True)
        # A run killed in the middle of a write leaves its temporary copy behind.
        pattern = os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")
        for stale in glob.glob(pattern):
            with contextlib.suppress(OSError):
                os.unlink(stale)

    def due(self, step: int, *, final: bool) -> bool:
        """Whether ``step`` is written: every ``interval`` steps and the last, once."""
        return step != self.last_step and (final or step % self.interval == 0)

    def write(self, atoms: Atoms, *, step: int, **record: Any) -> None:
        """Append ``atoms`` (with its energy and raw forces) as the frame of ``step``;
        ``record`` adds entries to the frame's record."""
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(
            frame,
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(apply_constraint=False),
        )
        frame.info[RECORD_KEY] = {
            "command": self.command,
            "step": step,
            "settings": self.settings,
            **record,
        }
        self._append(frame)
        self.frames += 1
        self.last_step = step

    def _append(self, frame: Atoms) -> None:
        """Copy the file, append to the copy, rename the copy over the file: O(frames) per
        write, a small price next to a model call."""
        descriptor, temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        os.close(descriptor)
        try:
            exists = self.path.exists()
            if exists:
                shutil.copyfile(self.path, temporary)
            with Trajectory(temporary, "a" if exists else "w") as trajectory:
                trajectory.write(frame)
            os.chmod(temporary, 0o666 & ~current_umask())
            replace_durably(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
