"""The calculator's worker side: one model per worker rank, built the way fairchem's
``OCPCalculator`` builds it, run on one structure per call with the graph split over the ranks.

Functions here run on every rank of the calculator's :class:`~ocp_graphpar.parallel.workers.
WorkerWorld`; the model a rank holds lives in this module between calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
from fairchem.core.common.relaxation.ase_utils import OCPCalculator
from fairchem.core.datasets import data_list_collater

from ocp_graphpar.calculator.loading import ModelSource, checkpoint_weights
from ocp_graphpar.calculator.neighbours import SkinNeighbourList
from ocp_graphpar.calculator.structure import ModelFacts, Structure
from ocp_graphpar.models.catalog import model_spec
from ocp_graphpar.parallel.groups import gp_rank, gp_size
from ocp_graphpar.trainers.finetune import ema_weights_by_name


class _Predictor:
    """fairchem's trainer (through ``OCPCalculator``, so normalisers, element references and
    output handling are upstream's) around this rank's graph-parallel model."""

    def __init__(self, source: ModelSource, *, cpu: bool, skin: float, seed: int | None):
        config = {**source.config, "local_rank": 0 if cpu else torch.cuda.current_device()}
        if seed is None:
            seed = (config.get("cmd") or {}).get("seed") or 0
        self.calculator = OCPCalculator(
            config_yml=config, checkpoint_path=source.checkpoint_path, cpu=cpu, seed=seed
        )
        trainer = self.calculator.trainer
        # fairchem wraps any model in DDP once torch.distributed is up; inference reduces no
        # gradients, and DDP would broadcast the buffers before every call.
        trainer.model = trainer._unwrapped_model
        self.trainer = trainer
        self.model = trainer.model
        self.uses_ema = source.use_ema and self._load_ema(source.checkpoint_path)
        self.neighbours = None
        if skin > 0 and self.model.use_pbc:
            self.neighbours = SkinNeighbourList(
                cutoff=self.model.cutoff,
                max_neighbors=self.model.max_neighbors,
                enforce_max_neighbors_strictly=getattr(
                    self.model, "enforce_max_neighbors_strictly", True
                ),
                skin=skin,
                gp_size=gp_size(),
                weights=self.model.partition_weights,
            )

    def _load_ema(self, path: str) -> bool:
        state, ema = checkpoint_weights(path)
        weights = ema_weights_by_name(self.model, state, ema)
        if weights:
            self.model.load_state_dict({**self.model.state_dict(), **weights}, strict=True)
        return bool(weights)

    def facts(self) -> ModelFacts:
        spec = model_spec(type(self.model).__name__)
        return ModelFacts(
            name=type(self.model).__name__,
            max_atomic_number=int(spec.max_atomic_number(self.model)),
            cutoff=float(self.model.cutoff),
            max_neighbors=int(self.model.max_neighbors),
            uses_ema=self.uses_ema,
        )

    def __call__(self, structure: Structure) -> tuple[float, np.ndarray]:
        data = self.calculator.a2g.convert(structure.to_atoms())
        batch = data_list_collater([data], otf_graph=True)
        with self._graph_from(batch):
            predictions = self.trainer.predict(batch, per_image=False, disable_tqdm=True)
        energy = float(predictions["energy"].reshape(-1)[0])
        forces = predictions["forces"].detach().cpu().double().numpy().reshape(-1, 3)
        return energy, forces

    @contextlib.contextmanager
    def _graph_from(self, batch) -> Iterator[None]:
        """Let the model read the kept neighbour list from ``batch`` rather than search."""
        if self.neighbours is None:
            yield
            return
        self.neighbours.attach(batch)
        searching, self.model.otf_graph = self.model.otf_graph, False
        try:
            yield
        finally:
            self.model.otf_graph = searching


_predictor: _Predictor | None = None


def start_predictor(
    source: ModelSource, *, cpu: bool, skin: float, seed: int | None, verbose: bool
) -> ModelFacts | None:
    """Build this rank's model; rank 0 returns what the calling process checks structures by."""
    global _predictor
    if not verbose:  # fairchem's logging set-up reads its level from LOGLEVEL
        os.environ["LOGLEVEL"] = "WARNING"
        logging.getLogger().setLevel(logging.WARNING)
    _predictor = _Predictor(source, cpu=cpu, skin=skin, seed=seed)
    return _predictor.facts() if gp_rank() == 0 else None


def predict(structure: Structure) -> tuple[float, np.ndarray] | None:
    """Energy (eV) and forces ``(N, 3)`` (eV/A) of ``structure``; rank 0 returns them."""
    result = _predictor(structure)
    return result if gp_rank() == 0 else None


def neighbour_searches() -> int:
    """How often this rank's neighbour list was searched (0 without one)."""
    return 0 if _predictor.neighbours is None else _predictor.neighbours.searches
