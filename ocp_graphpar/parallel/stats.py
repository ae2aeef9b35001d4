"""What the runtime did, for tests and benchmarks: collective traffic.

Measurement stays outside the models: a benchmark or test opens :func:`counting` around a
forward pass, and the runtime reports into whatever is open.

Bytes are those a rank receives from its peers: an all-to-all counts its received rows, an
all-gather the rows of the other ranks, a reduce-scatter and an all-reduce what a ring
algorithm receives ((P - 1) / P of the full buffer, twice for an all-reduce). Backward passes
count under the same kinds as forward passes, so one training step's traffic is one reading.

Only the runtime knows these rows: an uneven all-gather or reduce-scatter hands
``torch.distributed`` a buffer padded to the largest share, which is what
:mod:`ocp_graphpar.measure.wire` counts (the bench's accounting, the same for upstream models).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class CommStats:
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def record(self, kind: str, nbytes: int) -> None:
        self.calls[kind] += 1
        self.bytes[kind] += int(nbytes)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {kind: {"calls": self.calls[kind], "bytes": self.bytes[kind]} for kind in self.calls}


_ACTIVE = CommStats()


def comm_stats() -> CommStats:
    """The process-wide counter every collective records into."""
    return _ACTIVE


@contextlib.contextmanager
def counting() -> Iterator[CommStats]:
    """Count the collectives issued inside the block into a fresh ``CommStats``."""
    global _ACTIVE
    outer, _ACTIVE = _ACTIVE, CommStats()
    try:
        yield _ACTIVE
    finally:
        inner = _ACTIVE
        _ACTIVE = outer
        for kind in inner.calls:
            outer.calls[kind] += inner.calls[kind]
            outer.bytes[kind] += inner.bytes[kind]
