"""Shared fixtures (gloo worlds reused across the whole session, a tiny demo dataset) and the
``gpu`` marker: tests that need CUDA are skipped, with the reason, where there is none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Tests and the ranks they spawn import the shared ``helpers`` package from here.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gloo_world():
    """``gloo_world(P)``: a started :class:`WorkerWorld` of P ranks, shared by every test; each
    call on its ranks leaves torch's default dtype as it found it."""
    from helpers.isolation import IsolatedWorld

    from ocp_graphpar.parallel.workers import WorkerWorld

    worlds: dict[int, WorkerWorld] = {}

    def get(size: int) -> IsolatedWorld:
        if size not in worlds or not worlds[size].alive:
            worlds[size] = WorkerWorld(size)
        return IsolatedWorld(worlds[size])

    yield get
    for world in worlds.values():
        world.close()


@pytest.fixture(autouse=True)
def _default_dtype_restored():
    """Each test leaves torch's default dtype as it found it (many cases set float64)."""
    import torch

    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """A tiny embedded-demo LMDB dataset (4 systems, a quarter held out), one per test module."""
    from helpers.tiny_data import tiny_demo_dataset

    return tiny_demo_dataset(tmp_path_factory.mktemp("demo") / "data")
