"""``optim.shard_optimizer_state: true``: optimizer state and EMA partitioned over all ranks.

Under DDP x GP every rank of the world holds the same parameters and the same all-reduced
gradients; replicating the optimizer's moments (8 bytes per parameter for AdamW, 12 with
AMSGrad) and fairchem's EMA copy (4) on every rank is what sharding saves. With the key set,
:class:`ShardedModelState` replaces fairchem's optimizer by a
:class:`~ocp_graphpar.trainers.sharded_optimizer.ShardedOptimizer` (each rank steps the tensors
it owns, then broadcasts them) and its EMA by a
:class:`~ocp_graphpar.trainers.sharded_ema.ShardedEMA` (each rank averages its own tensors).
Gradient clipping, AMP's scaler and LR schedules act on the full, replicated gradients and
param groups as before, so the step equals the unsharded one.

Checkpoints stay upstream's: ``save`` gathers the optimizer state and the EMA onto rank 0 (on
the CPU) before fairchem writes them, which is collective, so every rank must call ``save``:
fairchem's training loop does, and at a preemption signal every rank gathers before rank 0
checkpoints (:class:`~ocp_graphpar.trainers.preemption.StepBoundaryPreemption`). Outside
training a preemption signal reaches rank 0 alone: before a new run's first step it still
writes the whole (initial) state, later it writes nothing and logs why (the requeued run resumes
from the last checkpoint).

Loading keeps each rank's share of a checkpoint any world size wrote, sharded or not, without
reading the whole file into each rank's memory: :func:`read_checkpoint` maps the file
(``torch.load(mmap=True)``), so a tensor's bytes are read from the page cache, which the ranks of
a node share, only when something copies them. Each rank copies the parameters (replicated) and
its own share of the optimizer state and EMA; the other ranks' shares are never read. Read
whole, the checkpoint (about 40 GB for the 2.5B config) would sit in every rank's memory at once.

``optim.shard_bucket_mb`` (default 25) sets the size of the flat buckets in which owners
broadcast updated parameters and EMA weights.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.trainers import preemption
from ocp_graphpar.trainers.sharded_ema import ShardedEMA
from ocp_graphpar.trainers.sharded_optimizer import (
    DEFAULT_BUCKET_BYTES,
    PER_TENSOR_OPTIMIZERS,
    Partition,
    ShardedOptimizer,
    world,
)

#: The key under ``optim`` that switches sharding on (default false).
SHARD_KEY = "shard_optimizer_state"
#: The key under ``optim`` for the size of the flat broadcast buckets, in MiB.
BUCKET_KEY = "shard_bucket_mb"
MIB = 2**20
DEFAULT_BUCKET_MB = DEFAULT_BUCKET_BYTES / MIB


def shard_optimizer_state(optim: Mapping[str, Any]) -> bool:
    """Whether ``optim`` (a config's ``optim`` section) shards the model state; a
    :class:`UserFacingError` for a setting sharding cannot honour."""
    value = optim.get(SHARD_KEY, False)
    if not isinstance(value, bool):
        raise UserFacingError(f"optim.{SHARD_KEY} must be true or false, not {value!r}.")
    name = optim.get("optimizer", "AdamW")
    if value and name not in PER_TENSOR_OPTIMIZERS:
        raise UserFacingError(
            f"optim.{SHARD_KEY} partitions the optimizer by parameter tensor, which needs an "
            f"optimizer that updates each tensor on its own; {name} does not. Use one of "
            f"{', '.join(sorted(PER_TENSOR_OPTIMIZERS))}, or set optim.{SHARD_KEY}: false."
        )
    return value


def shard_bucket_bytes(optim: Mapping[str, Any]) -> int:
    """Bytes per broadcast bucket from ``optim.shard_bucket_mb`` (a positive number of MiB,
    default 25); a :class:`UserFacingError` for any other value."""
    value = optim.get(BUCKET_KEY, DEFAULT_BUCKET_MB)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise UserFacingError(
            f"optim.{BUCKET_KEY} must be a positive number of MiB (default "
            f"{DEFAULT_BUCKET_MB:g}), not {value!r}."
        )
    return max(1, round(value * MIB))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path`` (fairchem's dict) with its tensors mapped from the file.

    Every tensor is a CPU tensor whose storage is a private mapping of the file: nothing is
    read until a tensor's bytes are, and then from the page cache, which every process of the
    node shares. Whoever keeps a tensor must copy it, so that the mapping ends with the dict
    (and no write lands in it). Files in torch's legacy format (before the zip format of
    torch 1.6) cannot be mapped: they are read whole, with a warning saying so.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "Checkpoint file not found", str(path))
    # weights_only is left to torch's default, as upstream's BaseTrainer.load_checkpoint
    # leaves it: the same files load, and are refused, as without sharding.
    if zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", mmap=True)
    logging.warning(
        f"{path} is in torch's legacy (non-zip) format, which cannot be memory-mapped: this "
        "rank reads the whole file into memory. Re-save it with torch.save to load it mapped."
    )
    return torch.load(path, map_location="cpu")


class ShardedModelState:
    """Trainer mixin (before :class:`StepBoundaryPreemption` and ``OCPTrainer`` in the bases)
    that shards the optimizer state and EMA when ``optim.shard_optimizer_state`` is true and
    otherwise changes nothing."""

    _partition: Partition | None = None
    _bucket_bytes: int = DEFAULT_BUCKET_BYTES
    _gathered: bool = False  # inside _gathered_state: save must not gather again

    @property
    def shards_model_state(self) -> bool:
        return self._partition is not None

    def load_optimizer(self) -> None:
        sharded = shard_optimizer_state(self.config["optim"])  # errors before any work
        self._bucket_bytes = shard_bucket_bytes(self.config["optim"])
        super().load_optimizer()
        if sharded:
            rank, world_size = world()
            self._partition = Partition.balanced(
                self.model.parameters(), rank=rank, world_size=world_size
            )
            self.optimizer = ShardedOptimizer(
                self.optimizer, partition=self._partition, bucket_bytes=self._bucket_bytes
            )

    def load_extras(self) -> None:
        super().load_extras()
        if self.shards_model_state and self.ema is not None:
            self.ema = self.new_ema()

    def new_ema(self) -> ExponentialMovingAverage:
        """fairchem's EMA of the current weights, sharded like the optimizer when it is."""
        if self.shards_model_state:
            return ShardedEMA(
                self.model.parameters(),
                self.ema_decay,
                partition=self._partition,
                bucket_bytes=self._bucket_bytes,
            )
        return ExponentialMovingAverage(self.model.parameters(), self.ema_decay)

    def load_checkpoint(
        self, checkpoint_path: str, checkpoint: dict | None = None, inference_only: bool = False
    ) -> None:
        if self.shards_model_state and checkpoint is None:
            # Mapped on the CPU (upstream reads it all onto the device): each rank copies the
            # parameters and its share of the optimizer state and EMA, nothing else.
            logging.info(f"Loading checkpoint from: {checkpoint_path}")
            checkpoint = read_checkpoint(checkpoint_path)
        super().load_checkpoint(checkpoint_path, checkpoint, inference_only)

    def save(
        self,
        metrics: dict | None = None,
        checkpoint_file: str = "checkpoint.pt",
        training_state: bool = True,
    ) -> str | None:
        args = {"metrics": metrics, "checkpoint_file": checkpoint_file}
        if not self.shards_model_state or self.is_debug or self._gathered:
            return super().save(**args, training_state=training_state)
        if self._alone_in_preemption_handler():
            return self._save_alone(**args, training_state=training_state)
        if training_state:
            with self._gathered_state():
                return super().save(**args, training_state=True)
        ema = self.ema
        if ema is None:
            return super().save(**args, training_state=False)
        # Upstream swaps the EMA weights in on the master rank alone; here all ranks must.
        ema.store()
        ema.copy_to()
        self.ema = None
        try:
            return super().save(**args, training_state=False)
        finally:
            self.ema = ema
            ema.restore()

    def _checkpoint_and_requeue(self, deferred: Any) -> None:
        # Every rank arrives here together; rank 0 then checkpoints alone.
        if not self.shards_model_state:
            return super()._checkpoint_and_requeue(deferred)
        with self._gathered_state():
            return super()._checkpoint_and_requeue(deferred)

    @contextlib.contextmanager
    def _gathered_state(self, *, alone: bool = False) -> Iterator[None]:
        """The full optimizer state and EMA on rank 0 for the block (collective unless
        ``alone``, which needs both still as initialised)."""
        holders = [
            h for h in (self.optimizer, self.ema) if isinstance(h, (ShardedOptimizer, ShardedEMA))
        ]
        for holder in holders:
            if alone:
                holder.consolidate_fresh()
            else:
                holder.consolidate_state_dict(to=0)
        self._gathered = True
        try:
            yield
        finally:
            self._gathered = False
            for holder in holders:
                holder.release_state_dict()

    def _alone_in_preemption_handler(self) -> bool:
        """Whether submitit's handler called ``save`` on rank 0 alone, outside training (in
        training, preemption waits for a step boundary that all ranks reach)."""
        return (
            getattr(self, "_deferred_signal", None) is None
            and preemption._submitit_signal() is not None
        )

    def _save_alone(self, **args: Any) -> str | None:
        untouched = self.optimizer.fresh and (self.ema is None or self.ema.fresh)
        if untouched and args["training_state"]:  # before a new run's first step: rank 0
            # knows the whole state (submitit's handler saves the training state)
            with self._gathered_state(alone=True):
                return super().save(**args)
        logging.error(
            "preemption outside training: with optim.shard_optimizer_state the other ranks "
            "hold parts of the optimizer state and EMA, so no checkpoint is written; the "
            "requeued run resumes from the last one"
        )
        return None
