"""fairchem's ``OCPTrainer`` with what the paper's recipes need and upstream lacks.

Select it with ``trainer: ocp_graphpar.trainers.GraphParallelTrainer`` (registered as
``ocp_graphpar`` once the plugin is imported), as every config of this repository does. Everything
else is ``OCPTrainer``'s; the models also train under upstream's ``trainer: ocp``, without the
items below.

Fixes for fairchem-core 1.10 defects, each in a module of its own (``docs/fairchem_fixes.md``):

- checkpoints, prediction and relaxation files and fitted normalisers are written atomically
  (:class:`~ocp_graphpar.trainers.atomic_outputs.AtomicOutputs`);
- a SLURM preemption signal checkpoints at the next optimizer-step boundary
  (:class:`~ocp_graphpar.trainers.preemption.StepBoundaryPreemption`);
- the process groups outlive ``distutils.cleanup``, so no gloo destructor hangs a rank at exit
  (:func:`~ocp_graphpar.trainers.process_groups.retain_process_groups`);
- the periodic ``checkpoint.pt`` (``optim.checkpoint_every``) holds the learning-rate schedule of
  the step it follows, so a run resumed from it keeps the uninterrupted run's learning rates
  (:class:`~ocp_graphpar.trainers.periodic_checkpoints.ScheduleAtCheckpointedStep`).

Features the paper's recipes need:

- ``model.finetune_config: {starting_checkpoint: PATH}``: a new training run starts from that
  checkpoint's weights (not its step, optimizer or normaliser state): fairchem's key for
  fine-tuning, which upstream honours for its Hydra models only. The key is taken out of the
  model's settings, so checkpoints of the run, predictions and the ASE calculator never look
  for the starting checkpoint again; a resumed run (``--checkpoint``) keeps its own weights.
- ``optim.scheduler: EpochExponentialLR`` with ``optim.lr_gamma``: the learning rate times
  ``lr_gamma`` once per epoch (GemNet-XL-FT: x0.95). fairchem steps its schedulers once per
  optimizer step, and its own schedulers count in steps, so a per-epoch decay needs the epoch's
  length, which only the trainer knows once its data loader exists.
- ``optim.shard_optimizer_state: true`` (default false): the optimizer state and fairchem's EMA
  are partitioned over all ranks (DP x GP), each rank holding about ``1 / world`` of them, while
  steps, gradient clipping, validation's EMA weights and checkpoints (upstream's format, loadable
  at any world size, sharded or not) stay as without it
  (:class:`~ocp_graphpar.trainers.sharded_state.ShardedModelState`).
"""

from __future__ import annotations

from typing import Any

from fairchem.core.common.registry import registry
from fairchem.core.modules.scheduler import LRScheduler
from fairchem.core.trainers import OCPTrainer
from torch.optim.lr_scheduler import LambdaLR

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.trainers.atomic_outputs import AtomicOutputs
from ocp_graphpar.trainers.finetune import load_starting_weights
from ocp_graphpar.trainers.periodic_checkpoints import ScheduleAtCheckpointedStep
from ocp_graphpar.trainers.preemption import StepBoundaryPreemption
from ocp_graphpar.trainers.process_groups import retain_process_groups
from ocp_graphpar.trainers.sharded_state import ShardedModelState

EPOCH_EXPONENTIAL = "EpochExponentialLR"


class EpochDecay:
    """``gamma ** (step // steps_per_epoch)``: a LambdaLR factor (picklable, so it is saved
    with the scheduler's state and a resumed run continues the schedule)."""

    def __init__(self, gamma: float, steps_per_epoch: int) -> None:
        self.gamma = gamma
        self.steps_per_epoch = max(1, steps_per_epoch)

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.steps_per_epoch)


def epoch_exponential_scheduler(optimizer, *, gamma: float, steps_per_epoch: int) -> LRScheduler:
    """fairchem's ``LRScheduler`` wrapping a per-step ``LambdaLR`` that decays per epoch."""
    scheduler = LRScheduler(optimizer, {"scheduler": "Null"})
    scheduler.scheduler_type = "LambdaLR"
    scheduler.scheduler = LambdaLR(optimizer, EpochDecay(gamma, steps_per_epoch))
    return scheduler


@registry.register_trainer("ocp_graphpar")
class GraphParallelTrainer(
    ScheduleAtCheckpointedStep,
    AtomicOutputs,
    ShardedModelState,
    StepBoundaryPreemption,
    OCPTrainer,
):
    """``OCPTrainer`` with atomic outputs, step-boundary preemption, process groups kept to the
    end, fine-tuning starts, the ``EpochExponentialLR`` schedule and sharded optimizer state and
    EMA (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # fairchem has built the process groups before the trainer; DDP takes the default one.
        retain_process_groups()
        super().__init__(*args, **kwargs)

    def load_model(self) -> None:
        self.finetune_config = self.config["model"].pop("finetune_config", None)
        super().load_model()

    def train(self, disable_eval_tqdm: bool = False) -> None:
        if self.finetune_config and self.step == 0:
            load_starting_weights(
                self._unwrapped_model, self.finetune_config, model_config=self.config["model"]
            )
            if self.ema is not None:  # average from the starting weights, not the random init
                self.ema = self.new_ema()
        super().train(disable_eval_tqdm=disable_eval_tqdm)

    def load_extras(self) -> None:
        optim = self.config["optim"]
        if optim.get("scheduler") != EPOCH_EXPONENTIAL:
            super().load_extras()
            return
        if "lr_gamma" not in optim:
            raise UserFacingError(
                f"optim.scheduler {EPOCH_EXPONENTIAL} needs optim.lr_gamma, the factor per epoch."
            )
        self.config["optim"] = {**optim, "scheduler": "Null"}
        try:
            super().load_extras()
        finally:
            self.config["optim"] = optim
        if self.train_loader is not None:
            self.scheduler = epoch_exponential_scheduler(
                self.optimizer,
                gamma=float(optim["lr_gamma"]),
                steps_per_epoch=len(self.train_loader),
            )
