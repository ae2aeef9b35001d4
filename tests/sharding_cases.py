"""Rank functions for the sharded optimizer state and EMA tests (tests/test_sharded_state.py).

Trainer runs go through fairchem's trainer as ``trainer_cases`` does, in float64: the model is
built under float64 as the default dtype and each batch's positions and labels are cast (the
cell stays float32, as fairchem's radius graph multiplies it with float32 unit cells).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import torch
from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage
from trainer_cases import build_trainer, dp_batch

from ocp_graphpar.trainers import preemption
from ocp_graphpar.trainers.preemption import DeferredSignal
from ocp_graphpar.trainers.sharded_ema import ShardedEMA
from ocp_graphpar.trainers.sharded_optimizer import Partition, ShardedOptimizer, world
from ocp_graphpar.trainers.sharded_state import model_state_bytes, sharded_model_state_bytes

GEMNET = "s2ef/gemnet_xl_demo"
#: GemNet-XL at a few thousand parameters: 1 block, widths 4 to 8.
TINY_GEMNET = {
    "num_blocks": 1,
    "emb_size_atom": 8,
    "emb_size_edge": 8,
    "emb_size_trip": 4,
    "emb_size_rbf": 4,
    "emb_size_cbf": 4,
    "emb_size_bil_trip": 4,
    "num_radial": 4,
    "num_spherical": 3,
}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """The default dtype for the block; the rank's processes serve other tests afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def detached(value):
    """``value`` with every tensor detached (upstream's stored EMA weights are clones that
    require grad, which cannot cross to the test process)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    if isinstance(value, list):
        return [detached(v) for v in value]
    return value


def _float64_trainer(run_dir: str, overrides: dict):
    return build_trainer(GEMNET, run_dir, overrides, dtype=torch.float64)


def _float64_batch(trainer, ids: list[int]):
    batch = dp_batch(trainer, ids)
    for key in ("pos", "energy", "forces"):
        batch[key] = batch[key].double()
    return batch


def _step(trainer, batch) -> dict:
    """One optimizer step as ``OCPTrainer.train`` takes it; returns the loss and the gradient
    norm fairchem logs (before clipping)."""
    logged: dict = {}
    if trainer.logger is not None:  # the master rank's only
        trainer.logger.log = lambda values, **kw: logged.update(values)
    trainer.model.train()
    out = trainer._forward(batch)
    loss = trainer._compute_loss(out, batch)
    trainer._backward(loss)
    trainer.step += 1
    trainer.scheduler.step()
    grad_norm = logged.get("grad_norm")
    return {"loss": loss.item(), "grad_norm": None if grad_norm is None else float(grad_norm)}


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer._unwrapped_model.named_parameters()}


def _ema_weights(trainer) -> dict[str, torch.Tensor]:
    """The EMA weights as validation sees them (store, copy_to, read, restore)."""
    before = _weights(trainer)
    trainer.ema.store()
    trainer.ema.copy_to()
    averaged = _weights(trainer)
    trainer.ema.restore()
    assert all(torch.equal(before[n], w) for n, w in _weights(trainer).items())
    return averaged


def train_and_save(
    run_dir: str, overrides: dict, batches: list[list[int]], save_after: int
) -> dict:
    """Train on ``batches`` (global ids per step), every rank calling ``save`` after
    ``save_after`` steps and for the best checkpoint at the end, then take a preemption
    signal. Returns the steps, weights, EMA weights, the three checkpoints' paths, this rank's
    model state bytes and (unsharded) what each of 4 sharded ranks would hold."""
    with default_dtype(torch.float64):
        trainer = _float64_trainer(run_dir, overrides)
        steps, path = [], None
        for step, ids in enumerate(batches):
            if step == save_after:
                path = trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
            steps.append(_step(trainer, _float64_batch(trainer, ids)))
        # Before the EMA readout: upstream's EMA keeps the weights it stored until the next.
        sharded = isinstance(trainer.optimizer, ShardedOptimizer)
        held = model_state_bytes(model=trainer.model, optimizer=trainer.optimizer, ema=trainer.ema)
        simulated = None  # unsharded: what sharding over 4 ranks would hold, rank by rank
        if not sharded:
            simulated = sharded_model_state_bytes(
                model=trainer.model, optimizer=trainer.optimizer, ema=trainer.ema, world_size=4
            )
        best = trainer.save(checkpoint_file="best_checkpoint.pt", training_state=False)
        preempted = _preempt(trainer)
        return {
            "best": best,
            "preempted": preempted,
            "steps": steps,
            "weights": _weights(trainer),
            "ema": _ema_weights(trainer),
            "checkpoint": path,
            "bytes": held,
            "simulated": simulated,
            "sharded": sharded,
        }


class Requeued(Exception):
    """Where submitit's handler would requeue the job (rank 0) or SLURM stop a rank."""


def _preempt(trainer) -> str | None:
    """A preemption signal at this step boundary, as StepBoundaryPreemption handles it in
    ``train``: every rank arrives, then submitit's handler checkpoints on rank 0 alone (as
    fairchem's ``Runner.checkpoint``: ``save(training_state=True)``). Returns the file."""
    written = []

    def submitit_handler(signum, frame):
        if world()[0] == 0:
            written.append(trainer.save(checkpoint_file="preempted.pt", training_state=True))
            raise Requeued

    def stopped():
        raise Requeued

    trainer._completed = (trainer.step, trainer.epoch)
    wait, preemption._wait_for_requeue = preemption._wait_for_requeue, stopped
    try:
        trainer._checkpoint_and_requeue(DeferredSignal(signal.SIGUSR2, submitit_handler))
    except Requeued:
        pass
    finally:
        preemption._wait_for_requeue = wait
    return written[0] if written else None


def save_alone_in_a_submitit_job(run_dir: str, overrides: dict, ids: list[int]) -> dict:
    """Rank 0 alone saves, as submitit's handler outside training: before the first step
    (a full checkpoint) and after it (none); and every rank saves before the first step."""
    with default_dtype(torch.float64):
        trainer = _float64_trainer(run_dir, overrides)
        together = trainer.save(checkpoint_file="together.pt")
        in_job, preemption._submitit_signal = preemption._submitit_signal, lambda: signal.SIGUSR2
        try:
            first = world()[0] == 0
            alone = trainer.save(checkpoint_file="alone.pt") if first else None
            _step(trainer, _float64_batch(trainer, ids))
            after_step = trainer.save(checkpoint_file="after_step.pt") if first else None
        finally:
            preemption._submitit_signal = in_job
        return {"together": together, "alone": alone, "after_step": after_step}


def resume(run_dir: str, overrides: dict, checkpoint: str, batches: list[list[int]]) -> dict:
    """Load ``checkpoint`` into a fresh trainer and train on ``batches``."""
    with default_dtype(torch.float64):
        trainer = _float64_trainer(run_dir, overrides)
        trainer.load_checkpoint(checkpoint)
        resumed_at = trainer.step
        steps = [_step(trainer, _float64_batch(trainer, ids)) for ids in batches]
        return {
            "resumed_at": resumed_at,
            "steps": steps,
            "weights": _weights(trainer),
            "ema": _ema_weights(trainer),
            "sharded": isinstance(trainer.optimizer, ShardedOptimizer),
        }


def build_error(run_dir: str, overrides: dict) -> str:
    """The message of the error building the trainer raises (empty if none)."""
    try:
        build_trainer(GEMNET, run_dir, overrides)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return ""


def toy_steps(shard: bool, steps: int) -> dict:
    """AdamW (AMSGrad, two param groups) and an EMA counting its updates on a toy model of
    three trainable tensors and a frozen one, sharded or not (at world 4, one rank owns
    no trainable tensor); the same (replicated) gradients on every rank. Returns weights, EMA
    weights and rank 0's state dicts, all as the unsharded objects would give them."""
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))
        model[0].bias.requires_grad_(False)
        no_decay = [model[0].bias, model[2].bias]
        optimizer = torch.optim.AdamW(
            [
                {"params": no_decay, "weight_decay": 0},
                {"params": [model[0].weight, model[2].weight]},
            ],
            lr=0.1,
            weight_decay=0.01,
            amsgrad=True,
        )
        ema: ExponentialMovingAverage
        if shard:
            rank, world_size = world()
            partition = Partition.balanced(model.parameters(), rank=rank, world_size=world_size)
            optimizer = ShardedOptimizer(optimizer, partition=partition)
            ema = ShardedEMA(model.parameters(), 0.5, partition=partition, use_num_updates=True)
        else:
            ema = ExponentialMovingAverage(model.parameters(), 0.5, use_num_updates=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
        inputs = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(steps):
            optimizer.zero_grad()
            model(inputs).square().sum().backward()
            optimizer.step()
            ema.update()
            scheduler.step()
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        ema.store()
        ema.copy_to()
        averaged = {n: p.detach().clone() for n, p in model.named_parameters()}
        ema.restore()
        if shard:
            optimizer.consolidate_state_dict(to=0)
            ema.consolidate_state_dict(to=0)
        first = world()[0] == 0
        return {
            "weights": weights,
            "ema": averaged,
            "optimizer": optimizer.state_dict() if first else None,
            "ema_state": detached(ema.state_dict()) if first else None,
            "restored": all(torch.equal(weights[n], p) for n, p in model.named_parameters()),
        }


def fairchem_train(run_dir: str, overrides: dict) -> dict:
    """``OCPTrainer.train`` itself (validation, best checkpoints, test predictions,
    checkpoints), in float32; returns the weights and the checkpoints' contents (rank 0)."""
    trainer = build_trainer(GEMNET, run_dir, overrides)
    trainer.train()
    checkpoints = {}
    if world()[0] == 0:
        folder = trainer.config["cmd"]["checkpoint_dir"]
        for name in ("checkpoint", "best_checkpoint"):
            checkpoints[name] = torch.load(f"{folder}/{name}.pt", weights_only=False)
    return {"step": trainer.step, "weights": _weights(trainer), "checkpoints": checkpoints}
