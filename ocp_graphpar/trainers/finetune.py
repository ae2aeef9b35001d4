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
#: fairchem's ScaleFactor (a parameter without gradient): in a state dict, not in the EMA.
_SCALE_FACTOR = "scale_factor"


def load_starting_weights(
    model: nn.Module, finetune_config: dict | None, *, model_config: dict | None = None
) -> None:
    """Load ``finetune_config["starting_checkpoint"]``'s weights into ``model``.

    Every tensor of ``model`` must be in the checkpoint with its shape; tensors the model does
    not have (an S2EF force head when fine-tuning for energies) are left out, and logged. The
    checkpoint's EMA weights are taken where it has them (those fairchem validates and predicts
    with), else its ``state_dict``. A checkpoint of other widths is refused, naming the tensors
    and the checkpoint's settings (those that differ from ``model_config``, where given).
    """
    if not finetune_config:
        return
    if set(finetune_config) != _KEYS:
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
    stored = checkpoint.get("state_dict", checkpoint)
    state = {_strip_ddp(key): value for key, value in stored.items()}
    _refuse_mismatch(model, state, checkpoint, path, model_config or {})
    ema = ema_weights_by_name(model, state, checkpoint.get("ema"))
    ours = model.state_dict()
    model.load_state_dict({key: ema.get(key, state[key]) for key in ours}, strict=True)
    dropped = sorted(set(state) - set(ours))
    logging.info(
        f"fine-tuning from {path}: {'EMA weights' if ema else 'state_dict'}, training state not "
        f"loaded; {len(dropped)} tensors this model does not have left out"
        + (f" ({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''})" if dropped else "")
    )


def _strip_ddp(key: str) -> str:
    while key.startswith(_DDP_PREFIX):
        key = key[len(_DDP_PREFIX) :]
    return key


def _refuse_mismatch(
    model: nn.Module, state: dict, checkpoint: dict, path: Path, model_config: dict
) -> None:
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    shapes = [
        f"{key} {tuple(state[key].shape)} in the checkpoint, {tuple(ours[key].shape)} here"
        for key in ours
        if key in state and state[key].shape != ours[key].shape
    ]
    if not (missing or shapes):
        return
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensors differ in shape ({'; '.join(shapes[:3])})")
    if missing:
        problems.append(f"{len(missing)} tensors are missing ({', '.join(missing[:3])})")
    theirs = (checkpoint.get("config") or {}).get("model") or {}
    settings = {k: v for k, v in theirs.items() if isinstance(v, int) and not isinstance(v, bool)}
    differ = {k: v for k, v in settings.items() if k in model_config and model_config[k] != v}
    if differ:
        hint = (
            " "
            + "; ".join(
                f"{k} is {v} in the checkpoint, {model_config[k]} in this config"
                for k, v in sorted(differ.items())
            )
            + "."
        )
    elif settings:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(settings.items()))
        hint = f" The checkpoint was trained with {theirs.get('name', 'its model')} and {listed}."
    else:
        hint = ""
    raise UserFacingError(
        f"model.finetune_config.starting_checkpoint {path} does not fit this model: "
        f"{'; '.join(problems)}.{hint} Set the model's widths and block counts in the config to "
        "the checkpoint's (the GP size and partition options may differ)."
    )


def ema_weights_by_name(model: nn.Module, state: dict, ema: dict | None) -> dict:
    """fairchem's EMA shadow parameters by state-dict name, or ``{}`` if they cannot be matched.

    The EMA keeps a list in the order of the trained model's parameters: its state dict's
    order less buffers and scale factors (which the EMA skips: no gradient), with a
    tensor shared between modules listed once (under each of its names here)."""
    shadow = (ema or {}).get("shadow_params")
    if not shadow:
        return {}
    buffers = {name for name, _ in model.named_buffers()}
    aliases: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if name not in buffers and not name.endswith(_SCALE_FACTOR):
            key = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
            )
            aliases.setdefault(key, []).append(name)
    groups = list(aliases.values())
    if len(groups) != len(shadow) or any(
        state[g[0]].shape != s.shape for g, s in zip(groups, shadow)
    ):
        logging.warning(
            "the starting checkpoint's EMA does not match its weights; using state_dict"
        )
        return {}
    return {name: tensor for group, tensor in zip(groups, shadow) for name in group}
