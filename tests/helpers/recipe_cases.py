"""The paper's recipe configs, built as ``fairchem`` builds them, run inside spawned gloo ranks."""

from __future__ import annotations

from helpers.ocp_trainer import build_trainer, load_repo_config, train_step

#: Small widths of the two architectures, for configs that are XL-wide.
SMALL_WIDTHS = {
    "GemNetXL": {
        "num_blocks": 2,
        "emb_size_atom": 16,
        "emb_size_edge": 32,
        "emb_size_trip": 8,
        "emb_size_rbf": 4,
        "emb_size_cbf": 4,
        "emb_size_bil_trip": 8,
        "num_radial": 8,
        "num_atom": 1,
        "num_after_skip": 1,
    },
    "DimeNetPPXL": {
        "hidden_channels": 32,
        "out_emb_channels": 32,
        "int_emb_size": 16,
        "basis_emb_size": 4,
        "num_blocks": 2,
        "num_radial": 6,
    },
}


def small(config_name: str, overrides: dict) -> dict:
    """``overrides`` plus small widths for the config's model, and one epoch on one worker."""
    model = load_repo_config(config_name)["model"]["name"].rsplit(".", 1)[-1]
    merged = {**overrides}
    merged["model"] = {**SMALL_WIDTHS[model], **overrides.get("model", {})}
    merged["optim"] = {
        "num_workers": 0,
        "max_epochs": 1,
        "batch_size": 2,
        "eval_batch_size": 2,
        **overrides.get("optim", {}),
    }
    return merged


def build_recipe_trainer(config_name: str, run_dir: str, overrides: dict):
    """The trainer a recipe config names, at small widths (see :func:`small`)."""
    return build_trainer(config_name, run_dir, small(config_name, overrides))


def recipe_step(config_name: str, run_dir: str, overrides: dict, relax: bool = False) -> dict:
    """One training step of a recipe (and a short relaxation of its relax split when
    ``relax``); returns the loss, the relaxation metrics and a checkpoint's path."""
    trainer = build_recipe_trainer(config_name, run_dir, overrides)
    batch = next(iter(trainer.train_loader))
    loss = train_step(trainer, batch)
    metrics = relaxation_metrics(trainer) if relax else None
    checkpoint = trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
    # each trainable parameter's names (a shared one has several), in the EMA's order
    names: dict[int, list[str]] = {}
    for name, p in trainer._unwrapped_model.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            names.setdefault(id(p), []).append(name)
    return {
        "loss": loss,
        "metrics": metrics,
        "checkpoint": checkpoint,
        "parameter_names": list(names.values()),
    }


def relaxation_metrics(trainer) -> dict[str, float]:
    """Run the trainer's relaxations; the metrics it logs (rank 0 holds the logger)."""
    logged: dict[str, float] = {}
    if trainer.logger is not None:
        upstream_log = trainer.logger.log

        def log(update, step=None, split=""):
            logged.update(update)
            return upstream_log(update, step=step, split=split)

        trainer.logger.log = log
    trainer.run_relaxations()
    return logged


def finetune_epoch(config_name: str, run_dir: str, overrides: dict) -> dict:
    """A fine-tuning run's first epoch through the trainer's own ``train``: the starting
    weights (before the first step), the learning rates it stepped with, and its val metrics."""
    trainer = build_recipe_trainer(config_name, run_dir, overrides)
    model = trainer._unwrapped_model
    lrs: list[float] = []
    starting: dict = {}
    upstream_forward = trainer._forward

    def forward(batch):
        if not starting:
            starting.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        if trainer.model.training:
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return upstream_forward(batch)

    trainer._forward = forward
    trainer.train(disable_eval_tqdm=True)
    return {
        "starting": starting,
        "lrs": lrs,
        "steps_per_epoch": len(trainer.train_loader),
        "trainable": [
            n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad
        ],
        "finetune_config": trainer.finetune_config,
        "saved_model_config": trainer.config["model"],
    }
