"""Calls that leave torch's process-wide state as they found it.

Many cases build models in float64 by setting torch's default dtype, and the gloo ranks are
shared by every test of a session: without this, a float64 case would leave the next test's
rank making float64 tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def call_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with torch's default dtype restored afterwards."""
    dtype = torch.get_default_dtype()
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_default_dtype(dtype)


class IsolatedWorld:
    """A :class:`~ocp_graphpar.parallel.workers.WorkerWorld` whose every call on its ranks is
    :func:`call_isolated`."""

    def __init__(self, world) -> None:
        self.world = world

    def run(self, fn: Callable[..., Any], *args: Any, gp_size: int | None = None, **kwargs: Any):
        return self.world.run(call_isolated, fn, *args, gp_size=gp_size, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.world, name)
