"""fairchem's own OCPTrainer, built from this repo's configs inside spawned gloo ranks.

Steps go through the trainer's methods, as its ``train`` loop calls them: ``_forward``,
``_compute_loss`` (upstream's DDP-aware losses), ``_backward`` (DDP all-reduce, gradient
clipping, optimizer, EMA). Runs in float32, as the trainer does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ocp_graphpar.parallel import dp_rank, dp_size, gp_size

REPO = Path(__file__).resolve().parents[2]


def load_repo_config(name: str, overrides: dict | None = None) -> dict:
    """``configs/{name}.yml`` with its includes (resolved from the repo root), merged with
    ``overrides`` (nested dicts, as fairchem's ``--a.b=value`` flags give)."""
    from fairchem.core.common.utils import load_config, merge_dicts

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        config, _, _ = load_config(f"configs/{name}.yml")
    finally:
        os.chdir(cwd)
    merged, _ = merge_dicts(config, overrides or {})
    return merged


def data_overrides(data_dir: str | os.PathLike) -> dict:
    s2ef = Path(data_dir) / "s2ef"
    return {"dataset": {"train": {"src": str(s2ef / "train")}, "val": {"src": str(s2ef / "val")}}}


def build_trainer(
    name: str,
    run_dir: str | os.PathLike,
    overrides: dict | None = None,
    drop_model_keys: Sequence[str] = (),
    *,
    dtype: torch.dtype = torch.float32,
):
    """The trainer the config names (``trainer:``, an OCPTrainer or a subclass) as ``fairchem
    --mode train`` builds it, on this rank's process groups. ``drop_model_keys``: model
    arguments to remove (e.g. ours, for an upstream model); ``dtype``: the default dtype the
    model is built in (left set: the caller restores it)."""
    from fairchem.core.common.registry import registry

    torch.set_default_dtype(dtype)
    config = load_repo_config(name, overrides)
    for key in drop_model_keys:
        config["model"].pop(key, None)
    return registry.get_trainer_class(config.get("trainer", "ocp"))(
        task=config.get("task", {}),
        model=config["model"],
        outputs=config["outputs"],
        dataset=config["dataset"],
        optimizer=config["optim"],
        loss_functions=config["loss_functions"],
        evaluation_metrics=config["evaluation_metrics"],
        identifier="test",
        timestamp_id="test",
        local_rank=0,
        run_dir=str(run_dir),
        print_every=1,
        seed=0,
        logger="tensorboard",
        cpu=True,
        gp_gpus=gp_size(),
    )


def dp_batch(trainer, global_ids: Sequence[int]):
    """This DP group's share of a global batch of training-set items (contiguous slices)."""
    per_group = len(global_ids) // dp_size()
    ids = global_ids[dp_rank() * per_group : (dp_rank() + 1) * per_group]
    return trainer.collater([trainer.train_dataset[i] for i in ids])


def train_step(trainer, batch) -> float:
    """One optimizer step; returns the loss of this rank, as the trainer logs it."""
    trainer.model.train()
    out = trainer._forward(batch)
    loss = trainer._compute_loss(out, batch)
    trainer._backward(loss)
    trainer.step += 1
    return loss.item()


def _parameters(trainer) -> dict[str, torch.Tensor]:
    """The trainable parameters, and every scale factor (a fit must agree too)."""
    return {n: p.detach().clone() for n, p in trainer._unwrapped_model.named_parameters()}


def parameter_update(name: str, run_dir: str, overrides: dict, global_ids: list[int]) -> dict:
    """How one training step on the global batch ``global_ids`` moves every parameter."""
    trainer = build_trainer(name, run_dir, overrides)
    before = _parameters(trainer)
    train_step(trainer, dp_batch(trainer, global_ids))
    after = _parameters(trainer)
    return {n: after[n] - before[n] for n in before}


def keeps_its_process_groups() -> bool:
    """Whether this rank's default, GP and DP groups are among those the plugin's trainer keeps
    referenced until the process exits (after it was built on them)."""
    import torch.distributed as dist
    from fairchem.core.common import gp_utils

    from ocp_graphpar.trainers.process_groups import retained_process_groups

    kept = retained_process_groups()
    groups = (dist.group.WORLD, gp_utils.get_gp_group(), gp_utils.get_dp_group())
    return all(any(group is k for k in kept) for group in groups)


def losses_then_checkpoint(
    name: str,
    run_dir: str,
    overrides: dict,
    batches: list[list[int]],
    save_after: int,
    drop_model_keys: Sequence[str] = (),
) -> dict:
    """Train on ``batches`` (one global batch of ids per step), saving a resumable checkpoint
    after ``save_after`` steps; returns every step's loss and the checkpoint's path."""
    trainer = build_trainer(name, run_dir, overrides, drop_model_keys)
    losses = []
    for step, ids in enumerate(batches):
        if step == save_after:
            path = trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
        losses.append(train_step(trainer, dp_batch(trainer, ids)))
    return {"losses": losses, "checkpoint": path}


def resumed_losses(
    name: str, run_dir: str, overrides: dict, checkpoint: str, batches: list[list[int]]
) -> dict:
    """Load a training checkpoint into a fresh trainer and train on ``batches``."""
    trainer = build_trainer(name, run_dir, overrides)
    trainer.load_checkpoint(checkpoint)
    resumed_at = trainer.step
    losses = [train_step(trainer, dp_batch(trainer, ids)) for ids in batches]
    return {"resumed_at": resumed_at, "losses": losses}


def loader_losses(name: str, run_dir: str, overrides: dict, steps: int) -> list[float]:
    """Losses of the first ``steps`` steps on the trainer's own (balanced, seeded) loader."""
    trainer = build_trainer(name, run_dir, overrides)
    trainer.train_sampler.set_epoch_and_start_iteration(0, 0)
    batches = iter(trainer.train_loader)
    return [train_step(trainer, next(batches)) for _ in range(steps)]
