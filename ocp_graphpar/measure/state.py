"""Model state per rank with and without ``optim.shard_optimizer_state``.

Parameters and gradients are replicated on every rank; sharding partitions AdamW's moments, the
AMSGrad maximum and fairchem's EMA over every rank of the world (DP x GP) by whole tensors
(:mod:`ocp_graphpar.trainers.sharded_state`). Two measurements:

- :func:`rank_state_bytes` runs on every rank of a spawned world: each rank builds the model,
  the trainer's optimizer and EMA, unsharded and then sharded, steps once and counts what it
  holds. World 4 x GemNet-XL unsharded would need 4 x 7 GB, so the bench runs it at a smaller
  width (the ratio depends on the widths only through how evenly whole tensors split).
- :func:`state_split` runs in one process: the unsharded state, and the share each rank of a
  world would hold, from the trainer's own partition (for the XL widths).
"""

from __future__ import annotations

import gc
from dataclasses import asdict

import torch

from ocp_graphpar.measure.contenders import build_contender, running

EMA_DECAY = 0.999  # the XL configs'


def _model_with_gradients(family: str, model_config: dict) -> torch.nn.Module:
    """Ours, with gradients allocated as from the second training step on."""
    with running("ours"):
        model = build_contender("ours", family, model_config)
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    return model


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with AMSGrad, as configs/s2ef/*_xl.yml train."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True)


def rank_state_bytes(family: str, model_config: dict) -> dict:
    """This rank's bytes of parameters, gradients, optimizer state and EMA after one
    optimizer step and EMA update, unsharded and sharded over the default process group:
    ``{"unsharded": {...}, "sharded": {...}}``."""
    from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

    from ocp_graphpar.measure.model_state import model_state_bytes
    from ocp_graphpar.trainers.sharded_ema import ShardedEMA
    from ocp_graphpar.trainers.sharded_optimizer import Partition, ShardedOptimizer, world

    model = _model_with_gradients(family, model_config)
    result = {}
    for sharded in (False, True):
        optimizer = _optimizer(model)
        if sharded:
            rank, world_size = world()
            partition = Partition.balanced(model.parameters(), rank=rank, world_size=world_size)
            optimizer = ShardedOptimizer(optimizer, partition=partition)
            ema = ShardedEMA(model.parameters(), EMA_DECAY, partition=partition)
        else:
            ema = ExponentialMovingAverage(model.parameters(), EMA_DECAY)
        optimizer.step()
        ema.update()
        counted = model_state_bytes(model=model, optimizer=optimizer, ema=ema)
        result["sharded" if sharded else "unsharded"] = asdict(counted)
        del optimizer, ema
        gc.collect()
    return result


def state_split(family: str, model_config: dict, *, world_size: int) -> dict:
    """The unsharded state of one rank and, from the same optimizer and EMA, what each of
    ``world_size`` ranks would hold sharded (the trainer's partition, computed in one process)."""
    from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

    from ocp_graphpar.measure.model_state import model_state_bytes, sharded_model_state_bytes

    model = _model_with_gradients(family, model_config)
    optimizer = _optimizer(model)
    optimizer.step()
    ema = ExponentialMovingAverage(model.parameters(), EMA_DECAY)
    ema.update()
    shares = sharded_model_state_bytes(
        model=model, optimizer=optimizer, ema=ema, world_size=world_size
    )
    return {
        "world": world_size,
        "unsharded": asdict(model_state_bytes(model=model, optimizer=optimizer, ema=ema)),
        "sharded": [asdict(share) for share in shares],
    }
