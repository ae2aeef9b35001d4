"""Shared fixtures: gloo worlds reused across the whole session, and a tiny demo dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned ranks import tests' modules


@pytest.fixture(scope="session")
def gloo_world():
    """``gloo_world(P)``: a started :class:`WorkerWorld` of P ranks, shared by every test."""
    from ocp_graphpar.parallel.workers import WorkerWorld

    worlds: dict[int, WorkerWorld] = {}

    def get(size: int) -> WorkerWorld:
        if size not in worlds or not worlds[size].alive:
            worlds[size] = WorkerWorld(size)
        return worlds[size]

    yield get
    for world in worlds.values():
        world.close()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """A tiny embedded-demo LMDB dataset (4 systems, a quarter held out), one per test module."""
    from tiny_data import tiny_demo_dataset

    return tiny_demo_dataset(tmp_path_factory.mktemp("demo") / "data")
