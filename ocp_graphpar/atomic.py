"""Files written atomically: readers (and a resumed run) see the old file or the complete new
one, never a prefix left by a crash, a kill or a full disk.

Every writer here goes through a temporary sibling in the same folder (so the rename never
crosses file systems), flushes it to disk, gives it the mode a plain ``open`` would (mkstemp's
0600 would hide a checkpoint from colleagues on a shared cluster file system), and renames it
over the target. On any failure, Ctrl-C included, the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A binary stream whose contents replace ``path`` when the ``with`` block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def replace_durably(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the complete file ``source`` over ``target`` (same folder): its bytes reach the
    disk first, and the rename itself is flushed, so that after a power loss too ``target`` is
    the old file or the new one."""
    with open(source, "rb") as stream:  # fsync needs a descriptor; read-only is enough
        os.fsync(stream.fileno())
    os.replace(source, target)
    folder = os.open(Path(target).parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    with atomic_writer(path) as stream:
        stream.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, content: Any) -> Path:
    """:func:`write_atomic` of ``content`` as indented JSON."""
    return write_atomic(path, json.dumps(content, indent=2, sort_keys=False) + "\n")


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-serialisable ``inputs`` (key order does not matter)."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
