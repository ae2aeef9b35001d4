"""Starting a training run from another run's weights (fine-tuning).

fairchem 1.x reads ``model.finetune_config: {starting_checkpoint: PATH}`` for its Hydra models
only; ``--checkpoint`` instead resumes a run (its step, epoch and optimizer state), which is not
what fine-tuning wants. :class:`~ocp_graphpar.trainers.GraphParallelTrainer` takes the same key
and loads the weights alone, from a checkpoint of this plugin or an upstream ``gemnet_t`` /
``dimenetplusplus`` checkpoint (the parameter names are upstream's), at any GP size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ocp_graphpar.errors import UserFacingError

_KEYS = {"starting_checkpoint"}
_DDP_PREFIX = "module."


def load_starting_weights(model: nn.Module, finetune_config: dict | None) -> None:
    """Load ``finetune_config["starting_checkpoint"]``'s weights into ``model``, strictly.

    The checkpoint's EMA weights are taken where it has them (those fairchem validates and
    predicts with), else its ``state_dict``. A checkpoint whose widths differ from the
    config's is refused with the tensors and the settings that differ.
    """
    if not finetune_config:
        return
    unknown = set(finetune_config) - _KEYS
    if unknown or "starting_checkpoint" not in finetune_config:
        raise UserFacingError(
            f"model.finetune_config takes starting_checkpoint only (got {sorted(finetune_config)})."
        )
    path = Path(finetune_config["starting_checkpoint"]).expanduser()
    if not path.is_file():
        raise UserFacingError(
            f"model.finetune_config.starting_checkpoint: {path} does not exist. Pass the path "
            "of a fairchem checkpoint (checkpoint.pt or best_checkpoint.pt)."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = {
        _strip_ddp(key): value for key, value in checkpoint.get("state_dict", checkpoint).items()
    }
    _refuse_mismatch(model, state, checkpoint, path)
    model.load_state_dict(state, strict=True)
    source = "state_dict"
    if _apply_ema(model, checkpoint.get("ema")):
        source = "EMA weights"
    logging.info(f"fine-tuning from {path} ({source}; training state not loaded)")


def _strip_ddp(key: str) -> str:
    while key.startswith(_DDP_PREFIX):
        key = key[len(_DDP_PREFIX) :]
    return key


def _refuse_mismatch(model: nn.Module, state: dict, checkpoint: dict, path: Path) -> None:
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    shapes = [
        f"{key} {tuple(state[key].shape)} in the checkpoint, {tuple(ours[key].shape)} here"
        for key in ours
        if key in state and state[key].shape != ours[key].shape
    ]
    if not (missing or extra or shapes):
        return
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensors differ in shape ({'; '.join(shapes[:3])})")
    if missing:
        problems.append(f"{len(missing)} tensors are missing ({', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} tensors are not in this model ({', '.join(extra[:3])})")
    theirs = (checkpoint.get("config") or {}).get("model") or {}
    settings = {k: v for k, v in theirs.items() if isinstance(v, int) and not isinstance(v, bool)}
    hint = (
        f" The checkpoint was trained with {theirs.get('name', 'its model')} and "
        + ", ".join(f"{k}: {v}" for k, v in sorted(settings.items()))
        + "."
        if settings
        else ""
    )
    raise UserFacingError(
        f"model.finetune_config.starting_checkpoint {path} does not fit this model: "
        f"{'; '.join(problems)}.{hint} Set the model's widths and block counts in the config to "
        "the checkpoint's (the GP size and partition options may differ)."
    )


def _apply_ema(model: nn.Module, ema: dict | None) -> bool:
    """Copy fairchem's EMA shadow parameters (in ``model.parameters()`` order) into ``model``."""
    shadow = (ema or {}).get("shadow_params")
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not shadow or len(shadow) != len(parameters):
        return False
    if any(s.shape != p.shape for s, p in zip(shadow, parameters)):
        return False
    with torch.no_grad():
        for s, p in zip(shadow, parameters):
            p.copy_(s)
    return True
