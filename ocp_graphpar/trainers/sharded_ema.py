"""fairchem's exponential moving average of the weights, partitioned over the ranks.

Every rank holds the same parameters, so the moving average of a tensor needs to live on one
rank only: :class:`ShardedEMA` keeps the shadow of the tensors its rank owns (the optimizer's
:class:`~ocp_graphpar.trainers.sharded_optimizer.Partition`) and updates them with upstream's
formula. Moving weights into the model is collective: ``copy_to`` and ``restore`` broadcast
the tensors from their owners (in the optimizer's flat buckets), so the model gets the full
averaged (or stored) weights on every rank, as fairchem's validation, prediction and
relaxations expect.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

from ocp_graphpar.trainers.sharded_optimizer import (
    DEFAULT_BUCKET_BYTES,
    Partition,
    broadcast_from_owners,
    checked_bucket_bytes,
)


class ShardedEMA(ExponentialMovingAverage):
    """``ExponentialMovingAverage`` holding ``shadow_params`` (and the weights ``store`` keeps)
    for this rank's tensors only. ``update`` and ``store`` are local; ``copy_to`` and
    ``restore`` are collective. ``state_dict`` is upstream's, for all tensors, after the
    collective :meth:`consolidate_state_dict`; ``load_state_dict`` takes upstream's and keeps
    (copies) this rank's share. ``copy_to`` and ``restore`` broadcast in flat buckets of at
    most ``bucket_bytes``."""

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        decay: float,
        *,
        partition: Partition,
        use_num_updates: bool = False,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        # Not upstream's __init__: it would clone every parameter on every rank.
        if decay < 0.0 or decay > 1.0:
            raise ValueError("Decay must be between 0 and 1")
        self.bucket_bytes = checked_bucket_bytes(bucket_bytes)
        self.decay = decay
        self.num_updates: int | None = 0 if use_num_updates else None
        params = [p for p in parameters if p.requires_grad]
        self._params_refs = [weakref.ref(p) for p in params]
        self.partition = partition
        self._owners = [partition.owner(p) for p in params]
        self._mine = [i for i, owner in enumerate(self._owners) if owner == partition.rank]
        self.shadow_params = [params[i].clone().detach() for i in self._mine]
        self.collected_params: list[torch.Tensor] = []
        self._stored = False  # whether ``store`` ran (on every rank: a rank may own nothing)
        self._consolidated: dict[str, Any] | None = None
        self.fresh = True  # the shadow is still the weights it started from

    def update(self, parameters: Iterable[torch.nn.Parameter] | None = None) -> None:
        params = list(self._get_parameters(parameters))
        decay = self.decay
        if self.num_updates is not None:
            self.num_updates += 1
            decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
        one_minus_decay = 1.0 - decay
        with torch.no_grad():
            for shadow, i in zip(self.shadow_params, self._mine):
                shadow.add_(params[i] - shadow, alpha=one_minus_decay)
        self.fresh = False

    def copy_to(self, parameters: Iterable[torch.nn.Parameter] | None = None) -> None:
        self._spread(list(self._get_parameters(parameters)), self.shadow_params)

    def store(self, parameters: Iterable[torch.nn.Parameter] | None = None) -> None:
        params = list(self._get_parameters(parameters))
        self.collected_params = [params[i].clone() for i in self._mine]
        self._stored = True

    def restore(self, parameters: Iterable[torch.nn.Parameter] | None = None) -> None:
        self._spread(list(self._get_parameters(parameters)), self.collected_params)

    def _spread(self, params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Each owner writes its ``values`` into its tensors, then broadcasts them."""
        for value, i in zip(values, self._mine):
            params[i].data.copy_(value.data)
        broadcast_from_owners(
            [p.data for p in params], owners=self._owners, bucket_bytes=self.bucket_bytes
        )

    def consolidate_state_dict(self, *, to: int = 0) -> None:
        """Gather every tensor's shadow (and stored weights, if any) onto rank ``to``, on the
        CPU, for ``state_dict``. Collective: every rank must call it."""
        params = list(self._get_parameters(None))
        stored = self.collected_params if self._stored else None
        gathered = {
            "shadow_params": self._gather(params, self.shadow_params, to=to),
            "collected_params": [] if stored is None else self._gather(params, stored, to=to),
        }
        if self.partition.rank == to:
            self._consolidated = {
                "decay": self.decay,
                "num_updates": self.num_updates,
                **gathered,
            }

    def _gather(self, params: list[torch.Tensor], values: list[torch.Tensor], *, to: int):
        rank, mine = self.partition.rank, dict(zip(self._mine, values))
        gathered = []
        for i, (param, owner) in enumerate(zip(params, self._owners)):
            value = mine[i] if owner == rank else torch.empty_like(param)
            if self.partition.world_size > 1:
                dist.broadcast(value.data, src=owner)
            if rank == to:
                gathered.append(value.detach().cpu())
        return gathered

    def state_dict(self) -> dict[str, Any]:
        """Upstream's ``state_dict`` for every tensor, as consolidated last (at world size 1,
        the current one)."""
        if self._consolidated is None and self.partition.world_size == 1:
            self.consolidate_state_dict(to=0)
            consolidated, self._consolidated = self._consolidated, None
            return consolidated
        if self._consolidated is None:
            raise RuntimeError(
                "ShardedEMA.state_dict() needs consolidate_state_dict() on every rank first "
                "(and is only available on the rank it consolidated to)"
            )
        return self._consolidated

    def release_state_dict(self) -> None:
        self._consolidated = None

    def consolidate_fresh(self) -> None:
        """What :meth:`consolidate_state_dict` gives while :attr:`fresh` (every shadow is the
        weights, unchanged since), from this rank alone."""
        assert self.fresh and not self._stored, "the EMA has state on other ranks"
        self._consolidated = {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow_params": [p.detach().cpu().clone() for p in self._get_parameters(None)],
            "collected_params": [],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Load upstream's ``state_dict`` (any world size wrote it), keeping this rank's share."""
        decay = state_dict["decay"]
        if decay < 0.0 or decay > 1.0:
            raise ValueError("Decay must be between 0 and 1")
        num_updates = state_dict["num_updates"]
        if not (num_updates is None or isinstance(num_updates, int)):
            raise ValueError("Invalid num_updates")
        params = list(self._get_parameters(None))
        shadow, collected = state_dict["shadow_params"], state_dict["collected_params"]
        if len(shadow) != len(params) or len(collected) not in (0, len(params)):
            raise ValueError(
                f"the EMA state holds {len(shadow)} tensors, the model {len(params)} trainable"
            )
        self.decay, self.num_updates = decay, num_updates
        self.shadow_params = [_copy_onto(shadow[i], params[i]) for i in self._mine]
        self.collected_params = [
            _copy_onto(collected[i], params[i]) for i in self._mine if collected
        ]
        self._stored = bool(collected)
        self.fresh = False


def _copy_onto(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` on ``like``'s device (upstream deep-copies, then moves)."""
    return tensor.detach().to(device=like.device, copy=True)
