"""Demo datasets small enough for tests that train, predict or relax through fairchem."""

from __future__ import annotations

from ocp_graphpar.tools.data.demo import FrameCounts

#: Two MD frames and one rattled frame per system beside its relaxation (the demo's default
#: is ten and four): every kind of frame, in tests that need only a few.
TINY_FRAMES = FrameCounts(md=2, rattled=1)
