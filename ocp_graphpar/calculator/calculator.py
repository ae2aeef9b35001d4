"""An ASE calculator that runs one structure's graph over several processes (and GPUs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ocp_graphpar.calculator import predictor
from ocp_graphpar.calculator.loading import model_source
from ocp_graphpar.calculator.structure import ModelFacts, Structure, check_structure
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.parallel.workers import RankDied, RankFailed, WorkerWorld


class WorkerError(RuntimeError):
    """A worker of the calculator died or failed; the calculator is stopped."""


class GraphParallelCalculator(Calculator):
    """Energy and forces of a fairchem checkpoint's model, its graph split over ``gp_size``
    worker processes: a structure too large for one GPU's memory runs on several.

    Example::

        with GraphParallelCalculator(checkpoint_path="best_checkpoint.pt", gp_size=4) as calc:
            atoms.calc = calc
            BFGS(atoms).run(fmax=0.05)

    The checkpoint is read as fairchem's ``OCPCalculator`` reads it: its config (or
    ``config_yml``), weights, normalisers and element references, through fairchem's own
    trainer on each worker. Where the checkpoint holds EMA averages of the weights
    (``checkpoint.pt`` of a run with ``optim.ema_decay``) those are used, as fairchem validates
    with them and writes them into ``best_checkpoint.pt``; ``use_ema=False`` takes the raw
    weights, as ``OCPCalculator`` does. Checkpoints of ``gemnet_t``, ``dimenetplusplus`` and
    ``painn`` load into their graph-parallel twins.

    Each call sends the atoms' numbers, positions, cell, pbc, tags and fixed atoms to the
    workers, which build the graph with the model's cutoff and ``max_neighbors``. With
    ``skin > 0`` the workers keep the pairs within ``cutoff + skin`` and the atoms' owners
    until an atom has moved more than ``skin / 2`` (molecular dynamics, relaxations): the graph
    is selected from them exactly as a new search would give it.

    Args:
        checkpoint_path: a fairchem checkpoint.
        gp_size: worker processes, the ranks of one GP group.
        cpu: run on CPU ranks (gloo); else rank ``r`` runs on GPU ``r`` (NCCL).
        config_yml: a config (path or dict) to build the model from instead of the
            checkpoint's.
        model_overrides: model settings replacing the config's (``{"max_neighbors": 30}``).
        use_ema: use the checkpoint's EMA averages where it holds them.
        skin: extra neighbour-search distance (A) kept between calls; 0 searches every call.
        seed: seed of the workers' random generators (default: the checkpoint's).
        threads_per_rank: CPU threads per worker (default: the cores shared evenly).
        timeout_s: longest wait for one call; ``None`` waits while every worker lives (a worker
            that dies is reported at once).
        verbose: keep fairchem's log messages from the workers.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        *,
        checkpoint_path: str | Path,
        gp_size: int = 1,
        cpu: bool = False,
        config_yml: str | Path | dict | None = None,
        model_overrides: dict | None = None,
        use_ema: bool = True,
        skin: float = 1.0,
        seed: int | None = None,
        threads_per_rank: int | None = None,
        timeout_s: float | None = None,
        verbose: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if gp_size < 1:
            raise UserFacingError(f"gp_size must be at least 1, got {gp_size}.")
        if skin < 0:
            raise UserFacingError(f"skin must be 0 or more (A), got {skin}.")
        if not cpu:
            _check_gpus(gp_size)
        source = model_source(
            checkpoint_path,
            config_yml=config_yml,
            model_overrides=model_overrides,
            use_ema=use_ema,
        )
        self.gp_size = gp_size
        threads = threads_per_rank or max(1, (os.cpu_count() or 1) // gp_size)
        self._world: WorkerWorld | None = WorkerWorld(
            gp_size,
            threads_per_rank=threads,
            timeout_s=timeout_s,
            backend="gloo" if cpu else "nccl",
        )
        try:
            (facts, *_) = self._run(
                predictor.start_predictor, source, cpu=cpu, skin=skin, seed=seed, verbose=verbose
            )
        except BaseException:
            self.close()
            raise
        self.model: ModelFacts = facts

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        structure = Structure.from_atoms(self.atoms)
        check_structure(structure, model=self.model, gp_size=self.gp_size)
        (result, *_) = self._run(predictor.predict, structure)
        energy, forces = result
        self.results = {"energy": energy, "free_energy": energy, "forces": np.asarray(forces)}

    def neighbour_searches(self) -> int:
        """How often the workers searched for neighbours (each call without a kept list)."""
        return self._run(predictor.neighbour_searches)[0]

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids, by GP rank (empty once closed)."""
        return [] if self._world is None else self._world.pids

    def _run(self, fn, *args, **kwargs) -> list:
        if self._world is None:
            raise WorkerError(
                "this GraphParallelCalculator is closed (or a worker failed): create a new one."
            )
        try:
            return self._world.run(fn, *args, **kwargs)
        except RankDied as died:
            self._world = None
            raise WorkerError(
                f"GP rank {died.rank} of the calculator's {self.gp_size} workers died: "
                f"{died}. The calculator is stopped; create a new one to go on."
            ) from None
        except RankFailed as failed:
            self._world = None
            last = failed.details.strip().splitlines()[-1]
            raise WorkerError(
                f"GP rank {failed.rank} of the calculator's workers failed: {last}\n"
                f"The calculator is stopped. The rank's traceback:\n{failed.details}"
            ) from None

    def close(self) -> None:
        """Stop the worker processes (also on leaving a ``with`` block)."""
        if self._world is not None:
            world, self._world = self._world, None
            world.close()

    def __enter__(self) -> GraphParallelCalculator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        world = getattr(self, "_world", None)
        if world is not None:
            world.close(force=True)


def _check_gpus(gp_size: int) -> None:
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < gp_size:
        raise UserFacingError(
            f"gp_size={gp_size} needs {gp_size} GPUs (one per rank) and this machine shows "
            f"{available}. Pass cpu=True to run the ranks on CPU, or a smaller gp_size."
        )
