"""Demo datasets small enough for tests that train, predict or relax through fairchem."""

from __future__ import annotations

from pathlib import Path

from ocp_graphpar.tools.data.demo import FrameCounts

#: Two MD frames and one rattled frame per system beside its relaxation (the demo's default
#: is ten and four): every kind of frame, in tests that need only a few.
TINY_FRAMES = FrameCounts(md=2, rattled=1)


def tiny_demo_dataset(out: Path, *, max_steps: int = 4) -> Path:
    """The embedded demo set at 4 systems, a quarter held out, :data:`TINY_FRAMES`, in ``out``."""
    from ocp_graphpar.tools.data import make_demo_dataset

    make_demo_dataset(
        out, systems=4, max_steps=max_steps, val_fraction=0.25, progress=False, counts=TINY_FRAMES
    )
    return out
