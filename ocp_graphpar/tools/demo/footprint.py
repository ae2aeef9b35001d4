"""What one graph-parallel training step of the demo model costs on each rank.

fairchem's logs say nothing about graph parallelism, so the demo measures it apart: the demo
config's model, built by the benchmark tools
(:func:`ocp_graphpar.measure.steps.measure_contender`), takes training steps on a batch of
demo systems on two spawned gloo ranks, which count the bytes through every collective, the
memory of parameters, gradients and activations, and each rank's share of atoms, edges and
triplets. The weights are the benchmark's seeded ones, not the trained ones: none of these
figures depends on the weights' values.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ocp_graphpar.errors import UserFacingError


def model_config(config: dict) -> dict:
    """The ``model`` section of a resolved fairchem config without ``name``: the keyword
    arguments of the model class, as the benchmark tools build it."""
    model = dict(config["model"])
    model.pop("name", None)
    return model


def sample_batch(lmdb_dir: str | os.PathLike, systems: int = 2):
    """The first frame of each of the first ``systems`` systems of an S2EF LMDB folder, collated
    as fairchem's trainer collates them (graphs built later by the model: ``otf_graph``)."""
    from fairchem.core.datasets import LmdbDataset
    from fairchem.core.datasets.lmdb_dataset import data_list_collater

    dataset = LmdbDataset({"src": str(lmdb_dir)})
    chosen, seen = [], set()
    for index in range(len(dataset)):
        item = dataset[index]
        if int(item.sid) not in seen:
            seen.add(int(item.sid))
            chosen.append(item)
        if len(chosen) == systems:
            break
    if not chosen:
        raise UserFacingError(f"{lmdb_dir} holds no samples; rebuild the dataset.")
    return data_list_collater(chosen, otf_graph=True)


def measure_training_step(model: dict, batch, ranks: int = 2) -> list[dict]:
    """Per-rank figures of one training step of ``model`` on ``batch`` under graph parallelism
    over ``ranks`` spawned gloo ranks (one GP group): the dicts of ``measure_contender``."""
    from ocp_graphpar.measure.steps import measure_contender
    from ocp_graphpar.parallel.workers import WorkerWorld

    with WorkerWorld(ranks) as world:
        results = world.run(measure_contender, "ours", "gemnet", model, batch, repeats=1)
    return [as_json(result) for result in results]


def batch_description(batch) -> dict:
    """Systems and atoms of a collated batch."""
    return {
        "systems": int(batch.natoms.numel()),
        "atoms": int(batch.natoms.sum()),
        "sids": [int(s) for s in batch.sid],
    }


def as_json(value: Any) -> Any:
    """``value`` with tensors and numpy scalars/arrays turned into plain Python values."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, torch.Tensor):
        return as_json(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
