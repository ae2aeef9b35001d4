"""Periodic checkpoints that hold the learning-rate schedule of the step they follow.

``OCPTrainer.train`` saves ``checkpoint.pt`` every ``optim.checkpoint_every`` steps right after
step ``s``'s optimizer update but before that step's ``scheduler.step()``. Upstream's checkpoint
therefore holds the scheduler (and the optimizer's ``lr``) of step ``s - 1`` beside the weights,
optimizer state and step counter of step ``s``, and a run resumed from it trains one schedule
step behind for good: with warm-up or decay, every later learning rate differs from the
uninterrupted run's. :class:`ScheduleAtCheckpointedStep` saves that checkpoint with the schedule
advanced to the end of step ``s``, as the resumed run needs it, and puts the running trainer's
schedule back for upstream to advance next.

Other saves are untouched: they happen where the schedule has already been stepped (the end of
an epoch, the preemption checkpoint at a step boundary) or hold no training state
(``best_checkpoint.pt``). ``ReduceLROnPlateau`` steps on validation metrics, not per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class ScheduleAtCheckpointedStep:
    """Trainer mixin: ``save`` of training state mid-step stores the schedule after the step.
    Place it before the other ``save`` overrides (``AtomicOutputs``) in the bases.

    Only saves made inside upstream's training loop are adjusted: there the scheduler is
    stepped once per step, so one step behind the counter means "saved mid-step". Code that
    drives steps itself, and saves, gets upstream's ``save`` unchanged.
    """

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with self.training_loop():
            return super().train(*args, **kwargs)

    @contextlib.contextmanager
    def training_loop(self) -> Iterator[None]:
        """Marks the span of upstream's training loop, where the scheduler steps per step."""
        previous, self._in_training_loop = getattr(self, "_in_training_loop", False), True
        try:
            yield
        finally:
            self._in_training_loop = previous

    def save(
        self,
        metrics: dict | None = None,
        checkpoint_file: str = "checkpoint.pt",
        training_state: bool = True,
    ) -> str | None:
        mid_step = training_state and getattr(self, "_in_training_loop", False)
        with schedule_after_this_step(self, training_state=mid_step):
            return super().save(
                metrics=metrics, checkpoint_file=checkpoint_file, training_state=training_state
            )


@contextlib.contextmanager
def schedule_after_this_step(trainer: Any, *, training_state: bool) -> Iterator[None]:
    """Inside, the trainer's LR scheduler and optimizer learning rates are those after step
    ``trainer.step`` when the scheduler has not been stepped for it yet; as before, after."""
    scheduler = getattr(trainer, "scheduler", None)
    inner = getattr(scheduler, "scheduler", None)
    stepped_per_step = scheduler is not None and scheduler.scheduler_type not in (
        "Null",
        "ReduceLROnPlateau",
    )
    behind = stepped_per_step and getattr(inner, "last_epoch", None) == trainer.step - 1
    if not (training_state and behind):
        yield
        return
    learning_rates = [group["lr"] for group in trainer.optimizer.param_groups]
    state = inner.state_dict()
    scheduler.step()
    try:
        yield
    finally:
        inner.load_state_dict(state)
        for group, lr in zip(trainer.optimizer.param_groups, learning_rates):
            group["lr"] = lr
