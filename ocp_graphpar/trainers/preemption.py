"""SLURM preemption and time-out signals, handled at optimizer-step boundaries.

Under ``fairchem --submit``, submitit checkpoints from inside its signal handler, on rank 0 only,
wherever the signal lands: possibly after ``OCPTrainer.train`` has advanced its step counter but
before that step's optimizer update, which the resumed run would then skip, or halfway through an
optimizer step. While :class:`StepBoundaryPreemption` trains, the handler only records the
signal; at the start of the next training step all ranks agree (one all-reduce of a flag per
step, only inside a submitit job), the step counter is set back to the steps actually
completed, and only then does submitit's own handler checkpoint and requeue.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

#: How long ranks other than 0 wait for rank 0 to requeue the job (SLURM then stops them).
REQUEUE_WAIT_S = 300


@dataclass
class DeferredSignal:
    """submitit's preemption signal and handler, and when the signal arrived (if it did)."""

    signum: int
    handler: Callable[[int, Any], Any]
    received_at: list[float] = field(default_factory=list)

    def record(self, signum: int, frame: Any) -> None:
        self.received_at.append(time.time())


class StepBoundaryPreemption:
    """Trainer mixin (before ``OCPTrainer`` in the bases) that defers submitit's preemption
    signal (``SIGUSR2`` by default) to the next training-step boundary. Outside a submitit job
    it changes nothing."""

    _deferred_signal: DeferredSignal | None = None
    _completed: tuple[int, float] = (0, 0.0)  # (step, epoch) after the last optimizer update

    def train(self, disable_eval_tqdm: bool = False) -> None:
        with _deferring_submitit_signal() as deferred:
            self._deferred_signal = deferred
            self._completed = (self.step, self.epoch)
            try:
                super().train(disable_eval_tqdm=disable_eval_tqdm)
            finally:
                self._deferred_signal = None

    def _forward(self, batch: Any) -> Any:
        # Validation and prediction also call _forward; only a training step is a boundary,
        # and every rank reaches it (the all-reduce below needs all of them).
        deferred = self._deferred_signal
        if (
            deferred is not None
            and self.model.training
            and _on_any_rank(bool(deferred.received_at), self.device)
        ):
            self._checkpoint_and_requeue(deferred)
        return super()._forward(batch)

    def _backward(self, loss: torch.Tensor) -> None:
        super()._backward(loss)
        self._completed = (self.step, self.epoch)  # this step's optimizer update is done

    def _checkpoint_and_requeue(self, deferred: DeferredSignal) -> None:
        # train() advanced the counter before this forward; the checkpoint must not count it.
        self.step, self.epoch = self._completed
        logging.warning(f"preemption signal: checkpointing after step {self.step}")
        _flush_logs(self)
        deferred.handler(deferred.signum, None)  # rank 0: checkpoint, requeue, exit
        _wait_for_requeue()


@contextlib.contextmanager
def _deferring_submitit_signal() -> Iterator[DeferredSignal | None]:
    """Within the block, submitit's preemption signal is only recorded; yields the record, or
    ``None`` outside a submitit job."""
    signum = _submitit_signal()
    handler = signal.getsignal(signum) if signum is not None else None
    if not callable(handler):
        yield None
        return
    deferred = DeferredSignal(signum=signum, handler=handler)
    signal.signal(signum, deferred.record)
    try:
        yield deferred
    finally:
        signal.signal(signum, handler)


def _submitit_signal() -> int | None:
    try:
        from submitit import JobEnvironment

        environment = JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return None
    return environment._usr_sig() if environment.activated() else None


def _on_any_rank(flag: bool, device: torch.device | str) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _flush_logs(trainer: Any) -> None:
    """Write out the logger's buffered metrics (TensorBoard keeps up to 2 minutes in memory)."""
    writer = getattr(trainer.logger, "writer", None)
    if writer is not None:
        writer.flush()


def _wait_for_requeue() -> None:
    """Ranks other than 0 stay alive (as submitit expects) until the requeue stops them."""
    time.sleep(REQUEUE_WAIT_S)
    raise RuntimeError(f"rank 0 did not requeue the job within {REQUEUE_WAIT_S} s")
