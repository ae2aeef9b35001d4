"""What the calculator's workers build their model from: a fairchem checkpoint's config with the
caller's changes, read once in the calling process so mistakes are reported there."""

from __future__ import annotations

import copy
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from fairchem.core.common.utils import load_config

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.models.catalog import model_spec

_DDP_PREFIX = "module."


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint and how to read it.

    Attributes:
        checkpoint_path: a fairchem checkpoint (``checkpoint.pt`` or ``best_checkpoint.pt``).
        config: the config the workers build the trainer from (the checkpoint's, or the
            caller's ``config_yml``, with the model's graph-parallel twin and overrides).
        use_ema: load the checkpoint's EMA averages over its weights where it holds them.
    """

    checkpoint_path: str
    config: dict
    use_ema: bool


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint, mapped rather than read where its format allows (zip files)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserFacingError(
            f"checkpoint {path} does not exist: pass the path of a fairchem checkpoint "
            "(checkpoint.pt or best_checkpoint.pt of a training run)."
        )
    mapped = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", mmap=mapped, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise UserFacingError(f"{path} is not a readable torch checkpoint ({error}).") from None


def model_source(
    checkpoint_path: str | Path,
    *,
    config_yml: str | Path | dict | None = None,
    model_overrides: dict | None = None,
    use_ema: bool = True,
) -> ModelSource:
    """Read and check what the workers need; raises :class:`UserFacingError` on bad input."""
    checkpoint = read_checkpoint(checkpoint_path)
    if config_yml is None:
        if "config" not in checkpoint:
            raise UserFacingError(
                f"{checkpoint_path} holds no config (not a fairchem checkpoint?): pass "
                "config_yml, the training run's config."
            )
        config = copy.deepcopy(checkpoint["config"])
    elif isinstance(config_yml, dict):
        config = copy.deepcopy(config_yml)
    else:
        config, _, _ = load_config(str(config_yml))
    if "model_attributes" in config:  # fairchem < 1.0 configs
        config["model_attributes"]["name"] = config.pop("model")
        config["model"] = config.pop("model_attributes")
    model = {**config["model"], **(model_overrides or {})}
    spec = model_spec(model["name"])
    # Our models and upstream's twins share parameter names: either loads into ours, which is
    # set to compute what the checkpoint's model computes.
    if model["name"] != spec.registry_name:
        model = {**spec.upstream_options, **model}
    model["name"] = spec.registry_name
    config["model"] = model
    config["dataset"] = [{"src": None, **_training_dataset(config.get("dataset"))}]
    # Inference writes nothing: no checkpoint folders, loggers or result files.
    config["is_debug"] = True
    return ModelSource(
        checkpoint_path=str(Path(checkpoint_path).expanduser()),
        config=config,
        use_ema=use_ema and bool(checkpoint.get("ema")),
    )


def _training_dataset(dataset) -> dict:
    """The training dataset's settings (its normaliser and reference keys are read from them)."""
    if isinstance(dataset, list):
        return dict(dataset[0]) if dataset else {}
    if isinstance(dataset, dict):
        return dict(dataset.get("train", dataset))
    return {}


def checkpoint_weights(path: str) -> tuple[dict, dict | None]:
    """The checkpoint's state dict by the model's names (DDP's prefix removed) and its EMA."""
    checkpoint = read_checkpoint(path)
    state = {}
    for key, value in checkpoint["state_dict"].items():
        while key.startswith(_DDP_PREFIX):
            key = key[len(_DDP_PREFIX) :]
        state[key] = value
    return state, checkpoint.get("ema")
