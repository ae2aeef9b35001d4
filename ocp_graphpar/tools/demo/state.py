"""Stage records of a demo folder: what finished, from which inputs, written atomically.

A stage is complete when its record ``<out>/.demo/<stage>.json`` exists and names the same
inputs fingerprint as now. The record is written (temporary file, ``fsync``, ``os.replace``)
only after every output of the stage is complete, so a crash or Ctrl-C at any moment leaves
either no record (the stage runs again) or a record whose outputs are all there.

A stage that can resume (training) also writes a *started* record when it begins; the next run
resumes it only if that record names the same inputs, otherwise its folder is wiped first. A
record holds the stage's JSON-serialisable outputs, so later stages read what earlier ones made
from the records alone and data flows one way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocp_graphpar.atomic import fingerprint, write_json_atomic

STATE_DIR = ".demo"


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file cheaply: absolute path, size and modification time."""
    path = Path(path).expanduser().absolute()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class StageState:
    """The records of one demo folder (``out``)."""

    out: Path

    @property
    def folder(self) -> Path:
        return self.out / STATE_DIR

    def _path(self, stage: str, kind: str = "done") -> Path:
        suffix = "" if kind == "done" else f".{kind}"
        return self.folder / f"{stage}{suffix}.json"

    def _read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # a record is written atomically; an unreadable one counts as absent

    def completed(self, stage: str, inputs_fingerprint: str) -> dict | None:
        """The record of ``stage`` if it completed from these inputs, else ``None``."""
        record = self._read(self._path(stage))
        if record is None or record.get("fingerprint") != inputs_fingerprint:
            return None
        return record

    def record(self, stage: str) -> dict | None:
        """The completion record of ``stage`` whatever its inputs (``None`` if absent)."""
        return self._read(self._path(stage))

    def mark_complete(
        self, stage: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any], seconds: float
    ) -> dict:
        """Record that ``stage`` finished from ``inputs`` with ``outputs``; call it only once
        every output is in place."""
        record = {
            "stage": stage,
            "fingerprint": fingerprint(inputs),
            "inputs": dict(inputs),
            "outputs": dict(outputs),
            "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json_atomic(self._path(stage), record)
        self._path(stage, "started").unlink(missing_ok=True)
        return record

    def forget(self, stage: str) -> None:
        """Drop the records of ``stage`` (before it runs again from new inputs)."""
        for kind in ("done", "started"):
            self._path(stage, kind).unlink(missing_ok=True)

    def mark_started(self, stage: str, inputs: Mapping[str, Any]) -> None:
        """Record that ``stage`` began from ``inputs`` (what a resumed run must match)."""
        write_json_atomic(
            self._path(stage, "started"),
            {"stage": stage, "fingerprint": fingerprint(inputs), "inputs": dict(inputs)},
        )

    def started_with(self, stage: str, inputs_fingerprint: str) -> bool:
        """Whether an unfinished attempt of ``stage`` began from these same inputs."""
        record = self._read(self._path(stage, "started"))
        return record is not None and record.get("fingerprint") == inputs_fingerprint
