"""Preemption and time-out signals under submitit, handled at optimizer-step boundaries.

submitit checkpoints from inside its signal handler, on rank 0 only, wherever the signal lands:
possibly after fairchem has advanced its step counter but before the optimizer step, which the
resumed run would then skip, or halfway through an optimizer step. Here the handler only
records the signal; at the start of the next training step all ranks agree (one all-reduce of
a flag per step), the step counter is set back to the steps actually completed, and only then
does submitit's own handler checkpoint and requeue.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

#: How long ranks other than 0 wait for rank 0 to requeue the job (SLURM then stops them).
REQUEUE_WAIT_S = 300


@contextlib.contextmanager
def checkpoint_at_step_boundaries(trainer) -> Iterator[None]:
    """Within this block, defer submitit's preemption signal (``SIGUSR2`` by default) to the
    next training-step boundary of ``trainer`` (a fairchem ``BaseTrainer``). Outside a submitit
    job this does nothing."""
    signum = _submitit_signal()
    submitit_handler = signal.getsignal(signum) if signum else None
    if not callable(submitit_handler):
        yield
        return
    requested = []
    completed = {"step": trainer.step, "epoch": trainer.epoch}
    upstream_forward, upstream_backward = trainer._forward, trainer._backward

    def backward(loss) -> None:
        upstream_backward(loss)
        completed.update(step=trainer.step, epoch=trainer.epoch)

    def forward(batch):
        if trainer.model.training and _any_rank(bool(requested), trainer.device):
            trainer.step, trainer.epoch = completed["step"], completed["epoch"]
            logging.warning(f"preemption signal: checkpointing after step {trainer.step}")
            _flush_logs(trainer)
            submitit_handler(signum, None)  # rank 0: checkpoint, requeue, exit
            _wait_for_requeue()
        return upstream_forward(batch)

    signal.signal(signum, lambda *_: requested.append(time.time()))
    trainer._forward, trainer._backward = forward, backward
    try:
        yield
    finally:
        trainer._forward, trainer._backward = upstream_forward, upstream_backward
        signal.signal(signum, submitit_handler)


def _flush_logs(trainer) -> None:
    """Write out the logger's buffered metrics (TensorBoard keeps up to 2 minutes in memory)."""
    writer = getattr(trainer.logger, "writer", None)
    if writer is not None:
        writer.flush()


def _submitit_signal() -> int | None:
    try:
        from submitit import JobEnvironment

        environment = JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return None
    return environment._usr_sig() if environment.activated() else None


def _any_rank(flag: bool, device) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _wait_for_requeue() -> None:
    """Ranks other than 0 stay alive (as submitit expects) until the requeue stops them."""
    time.sleep(REQUEUE_WAIT_S)
    raise RuntimeError(f"rank 0 did not requeue the job within {REQUEUE_WAIT_S} s")
