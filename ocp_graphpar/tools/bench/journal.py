"""Finished benchmark runs, kept on disk as they finish, so an interrupted suite resumes.

An XL suite takes most of an hour on a small machine; losing it to a crash, a Ctrl-C or a
closed terminal would cost all of it. Each finished record is appended to a JSON-lines file
(flushed and fsynced) together with a fingerprint of what produced it (the workload's
definition and the GP sizes), and a later run reuses only records whose fingerprint still
matches. A torn last line, from a kill mid-write, is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

Key = tuple


class Journal:
    """Records by key, read from ``path`` if it exists; :meth:`add` appends durably.

    With ``path=None`` the journal lives in memory only.
    """

    def __init__(self, path: str | os.PathLike | None, *, resume: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self._records: dict[Key, tuple[str, dict]] = {}
        if self.path is None:
            return
        if not resume:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._read()

    def _read(self) -> None:
        text = self.path.read_text()
        if text and not text.endswith("\n"):  # a torn last line: drop it before appending
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text)
            log.warning("%s: dropped an incomplete last record (interrupted write)", self.path)
        for number, line in enumerate(text.splitlines(), 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                log.warning(
                    "%s: ignoring unreadable line %d (interrupted write)", self.path, number
                )
                continue
            self._records[tuple(entry["key"])] = (entry["fingerprint"], entry["record"])
        if self._records:
            log.info(
                "%s: %d finished runs found; reusing those still current",
                self.path,
                len(self._records),
            )

    def get(self, key: Key, fingerprint: str) -> dict | None:
        """The record stored under ``key``, if it came from the same ``fingerprint``."""
        stored = self._records.get(tuple(key))
        return stored[1] if stored and stored[0] == fingerprint else None

    def add(self, key: Key, fingerprint: str, record: dict) -> dict:
        self._records[tuple(key)] = (fingerprint, record)
        if self.path is None:
            return record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": list(key), "fingerprint": fingerprint, "record": record})
        with open(self.path, "a") as stream:
            stream.write(line + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        return record

    def discard(self) -> None:
        """Forget the file, once its records are saved in the final results."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
