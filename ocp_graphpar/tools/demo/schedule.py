"""The demo's training schedule, sized from the data: pure arithmetic, no I/O.

From the number of training frames, the batch size and the asked-for optimizer steps and
validations, this gives the whole epochs to run, the validation and checkpoint intervals and
the learning-rate warm-up and decay milestones (all in optimizer steps), and the frame stride
that keeps an epoch within the asked-for steps. The stages
(:mod:`ocp_graphpar.tools.demo.stages`) read the batch size from the config and run the
schedule through fairchem; this module does neither and imports no other demo module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Fewest optimizer steps between two checkpoints (one costs about 0.3 s to write and sync).
MIN_CHECKPOINT_INTERVAL = 20
#: How far (relative) the validation spacing may move to land the last validation on the last step.
EVAL_SPACING_SLACK = 0.15
#: Learning-rate schedule, as fractions of the run (fairchem's warm-up and step decay, the form
#: of the OC20 GemNet configs): linear warm-up from ``warmup_factor`` x the initial rate over
#: the first 5% of the steps, then x ``lr_gamma`` (the config's) at 60% and at 85% of them.
WARMUP_FRACTION = 0.05
MILESTONE_FRACTIONS = (0.6, 0.85)
#: fairchem reads milestones below 100 as epochs, a form it refuses: shorter runs skip them.
FAIRCHEM_MIN_MILESTONE = 100


@dataclass(frozen=True)
class Schedule:
    """Whole epochs near the asked-for steps, with validation and checkpoint intervals and the
    learning-rate schedule; every count but ``epochs`` is in optimizer steps.

    fairchem validates every ``eval_every`` steps and checkpoints every ``checkpoint_every``
    steps, not at the end: ``checkpoint_every`` divides the total so the final weights are
    checkpointed; ``eval_every`` divides it too when a divisor is close to the asked-for spacing,
    so the last validation is at the last step.

    Attributes:
        epochs: passes over the training frames (at least 1).
        steps_per_epoch: batches an epoch, ``ceil(train_frames / batch_size)``.
        total_steps: ``epochs * steps_per_epoch``.
        eval_every: steps between validations.
        checkpoint_every: steps between checkpoints; divides ``total_steps``.
        warmup_steps: steps of linear learning-rate warm-up (at least 1).
        lr_milestones: steps after which the learning rate decays, ascending; only those of at
            least ``FAIRCHEM_MIN_MILESTONE``, so empty for short runs.
    """

    epochs: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    checkpoint_every: int
    warmup_steps: int
    lr_milestones: tuple[int, ...]

    def overrides(self) -> list[str]:
        """The fairchem options that run this schedule."""
        milestones = ",".join(map(str, self.lr_milestones))
        return [
            f"--optim.max_epochs={self.epochs}",
            f"--optim.eval_every={self.eval_every}",
            f"--optim.checkpoint_every={self.checkpoint_every}",
            f"--optim.warmup_steps={self.warmup_steps}",
            f"--optim.lr_milestones=[{milestones}]",
        ]


def training_schedule(train_frames: int, batch_size: int, steps: int, evaluations: int) -> Schedule:
    """The schedule for ``train_frames`` in batches of ``batch_size`` (one GP group, so one
    data-parallel replica: fairchem's sampler gives ``ceil(frames / batch)`` steps an epoch).

    ``steps`` is the asked-for number of optimizer steps, rounded to whole epochs;
    ``evaluations`` the asked-for number of validations over the run (0 is read as 1).
    """
    per_epoch = math.ceil(train_frames / batch_size)
    epochs = max(1, round(steps / per_epoch))
    total = epochs * per_epoch
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    spacing = max(1, round(total / max(evaluations, 1)))
    near = [d for d in divisors if abs(d - spacing) <= EVAL_SPACING_SLACK * spacing]
    eval_every = min(near, key=lambda d: abs(d - spacing)) if near else spacing
    # At every validation at least, but not more often than every MIN_CHECKPOINT_INTERVAL steps.
    interval = min(MIN_CHECKPOINT_INTERVAL, eval_every)
    checkpoint_every = min(d for d in divisors if d >= interval)
    milestones = (round(fraction * total) for fraction in MILESTONE_FRACTIONS)
    return Schedule(
        epochs=epochs,
        steps_per_epoch=per_epoch,
        total_steps=total,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        warmup_steps=max(1, round(WARMUP_FRACTION * total)),
        lr_milestones=tuple(m for m in milestones if m >= FAIRCHEM_MIN_MILESTONE),
    )


def auto_frame_stride(train_frames: int, steps: int, batch_size: int) -> int:
    """The smallest stride (keep every n-th frame, at least 1) that keeps one epoch of
    ``train_frames`` in batches of ``batch_size`` within ``steps`` optimizer steps."""
    return max(1, math.ceil(train_frames / (steps * batch_size)))
