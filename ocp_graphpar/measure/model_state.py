"""Model state per rank, one accounting for the trainer's sharding, the planner and the bench:
parameters, gradients, optimizer state and EMA, counted from the tensors a rank holds
(:func:`model_state_bytes`), simulated for every rank of a sharded world from one process
(:func:`sharded_model_state_bytes`), or per parameter from a config's ``optim`` section
(:func:`bytes_per_parameter`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

from ocp_graphpar.measure.memory import tensor_bytes
from ocp_graphpar.trainers.sharded_optimizer import Partition, ShardedOptimizer
from ocp_graphpar.trainers.sharded_state import shard_optimizer_state


@dataclass(frozen=True)
class ModelStateBytes:
    """Bytes of training state one rank holds (or, per parameter, would hold)."""

    parameters: float
    gradients: float
    optimizer: float
    ema: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.ema

    def sharded(self, *, world: int) -> ModelStateBytes:
        """Per-rank bytes with the optimizer state and EMA partitioned over ``world`` ranks
        (rounded up: a rank holds at most its even share); parameters and gradients stay
        replicated, as every rank's forward and backward needs them whole."""
        return ModelStateBytes(
            parameters=self.parameters,
            gradients=self.gradients,
            optimizer=math.ceil(self.optimizer / world),
            ema=math.ceil(self.ema / world),
        )


def model_state_bytes(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: ExponentialMovingAverage | None = None,
) -> ModelStateBytes:
    """What this rank's parameters, gradients, optimizer state (per-parameter tensors) and EMA
    (shadow and stored weights) occupy, counted from the tensors themselves (each storage once),
    sharded or not."""
    state = (
        optimizer.local.state
        if isinstance(optimizer, ShardedOptimizer)
        else (optimizer.state if optimizer is not None else {})
    )
    params = list(model.parameters())
    return ModelStateBytes(
        parameters=tensor_bytes(params),
        gradients=tensor_bytes(p.grad for p in params),
        optimizer=tensor_bytes(_per_parameter_state(v for s in state.values() for v in s.values())),
        ema=tensor_bytes([*ema.shadow_params, *ema.collected_params]) if ema else 0,
    )


def sharded_model_state_bytes(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: ExponentialMovingAverage | None = None,
    world_size: int,
) -> list[ModelStateBytes]:
    """What each of ``world_size`` ranks would hold with ``optim.shard_optimizer_state``,
    from an unsharded optimizer and EMA in one process (after a step, so the state exists):
    each rank keeps the state of the tensors :meth:`Partition.balanced` gives it, the tensors
    :class:`ShardedOptimizer` and :class:`ShardedEMA` would create. For the bench, which
    measures model state in one process."""
    params = list(model.parameters())
    owner = Partition.balanced(params, rank=0, world_size=world_size).owner
    trainable_owners = [owner(p) for p in params if p.requires_grad]  # the EMA's tensors
    averaged = (ema.shadow_params, ema.collected_params) if ema else ()
    replicated = {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params),
    }
    return [
        ModelStateBytes(
            **replicated,
            optimizer=tensor_bytes(
                _per_parameter_state(
                    v
                    for p, state in optimizer.state.items()
                    if owner(p) == rank
                    for v in state.values()
                )
            ),
            ema=tensor_bytes(
                t for values in averaged for t, o in zip(values, trainable_owners) if o == rank
            ),
        )
        for rank in range(world_size)
    ]


def _per_parameter_state(values: Iterable[Any]) -> Iterable[torch.Tensor]:
    """The optimizer's per-parameter tensors; 0-dimensional step counters are bookkeeping."""
    return (v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0)


#: Per-parameter buffers of each optimizer's state (before the options that add one).
STATE_BUFFERS = {
    **{"Adam": 2, "AdamW": 2, "Adamax": 2, "NAdam": 2, "RAdam": 2, "Adadelta": 2, "Rprop": 2},
    **{"Adagrad": 1, "RMSprop": 1, "ASGD": 1, "SGD": 0},
}


def bytes_per_parameter(
    *, optim: Mapping[str, Any], world_size: int, element_size: int = 4
) -> ModelStateBytes:
    """Per-rank bytes of training state per model parameter, for the memory planner:
    parameters and gradients replicated; optimizer state (AdamW: 2 moments, +1 buffer with
    AMSGrad) and the EMA copy (with ``ema_decay``) divided by ``world_size`` (all ranks, DP x
    GP) when ``optim.shard_optimizer_state`` is true. Sharding by whole tensors balances the
    split closely, not exactly; :func:`model_state_bytes` measures it."""
    name = optim.get("optimizer", "AdamW")
    options = optim.get("optimizer_params", {})
    buffers = STATE_BUFFERS.get(name, 2) + bool(options.get("amsgrad", False))
    buffers += bool(options.get("momentum", 0)) if name in ("SGD", "RMSprop") else 0
    buffers += bool(options.get("centered", False)) if name == "RMSprop" else 0
    share = world_size if shard_optimizer_state(optim) else 1
    return ModelStateBytes(
        parameters=element_size,
        gradients=element_size,
        optimizer=buffers * element_size / share,
        ema=element_size / share if optim.get("ema_decay") else 0,
    )
