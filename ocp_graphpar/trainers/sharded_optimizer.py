"""Optimizer state partitioned over every rank of the world (ZeRO stage 1), by whole tensors.

Under DDP x GP every rank holds the same parameters and, after DDP's all-reduce, the same
(already scaled) gradients, so the update of a parameter tensor can be computed by one rank and
sent to the others. :class:`Partition` gives each tensor an owner, balancing elements over the
ranks; :class:`ShardedOptimizer` runs the configured torch optimizer (same class, same param
groups and hyperparameters) on the tensors this rank owns and then broadcasts each updated
tensor from its owner. Per rank the optimizer state is about ``1 / world`` of the unsharded one.

Whole tensors, not slices: any optimizer whose update of a tensor reads only that tensor's
gradient and state gives the unsharded step exactly (:data:`PER_TENSOR_OPTIMIZERS`), and the
state of a tensor stays in one piece, so :meth:`ShardedOptimizer.consolidate_state_dict` can
rebuild torch's own ``state_dict`` (same parameter indices and groups) for upstream checkpoints.
"""

from __future__ import annotations

import heapq
import inspect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

#: torch.optim classes whose update of a tensor depends on that tensor's gradient and state
#: only (LBFGS couples all parameters; SparseAdam and Muon need special gradients or shapes).
PER_TENSOR_OPTIMIZERS = frozenset(
    {"Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "ASGD", "NAdam", "RAdam"}
    | {"RMSprop", "Rprop", "SGD"}
)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_from_owners(tensors: Sequence[torch.Tensor], *, owners: Sequence[int]) -> None:
    """Overwrite each tensor, in place on every rank, with its owner's copy. All ranks must
    call this with the same tensors in the same order; the broadcasts are issued together."""
    if world()[1] == 1:
        return
    works = [dist.broadcast(t, src=o, async_op=True) for t, o in zip(tensors, owners)]
    for work in works:
        work.wait()


@dataclass(frozen=True)
class Partition:
    """The rank that owns each parameter tensor (looked up by identity)."""

    rank: int
    world_size: int
    owners: dict[int, int]  # id(parameter) -> rank

    @classmethod
    def balanced(
        cls, parameters: Iterable[torch.Tensor], *, rank: int, world_size: int
    ) -> Partition:
        """Largest tensor first onto the rank with the fewest elements so far (ties: lower
        index, lower rank), so every rank computes the same partition and each holds close to
        ``1 / world_size`` of the state. Frozen tensors never get state and weigh nothing."""
        params = list(parameters)
        weight = [p.numel() if p.requires_grad else 0 for p in params]
        loads = [(0, r) for r in range(world_size)]
        owners: dict[int, int] = {}
        for index in sorted(range(len(params)), key=lambda i: (-weight[i], i)):
            load, owner = heapq.heappop(loads)
            owners[id(params[index])] = owner
            heapq.heappush(loads, (load + weight[index], owner))
        return cls(rank=rank, world_size=world_size, owners=owners)

    def owner(self, param: torch.Tensor) -> int:
        try:
            return self.owners[id(param)]
        except KeyError:
            raise ValueError("a parameter outside the model that was partitioned") from None

    def owns(self, param: torch.Tensor) -> bool:
        return self.owner(param) == self.rank


@dataclass(frozen=True)
class _Broadcast:
    """A state tensor that travels by broadcast from its owner (the others allocate it)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


class ShardedOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose state lives on the rank owning each parameter.

    ``param_groups`` are the full groups of the optimizer it replaces (LR schedulers and
    ``GradScaler`` act on them as on the original); each step copies their hyperparameters
    into the local optimizer's groups, steps it and broadcasts every updated tensor.
    ``state_dict`` is torch's format for the full optimizer, available after the collective
    :meth:`consolidate_state_dict`; ``load_state_dict`` takes that format and keeps this rank's
    share.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, partition: Partition) -> None:
        groups = [{**g, "params": list(g["params"])} for g in optimizer.param_groups]
        super().__init__(groups, optimizer.defaults)
        self.partition = partition
        local_groups = [
            {**_hyperparameters(g), "params": [p for p in g["params"] if partition.owns(p)]}
            for g in self.param_groups
        ]
        cls = type(optimizer)
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        self.local: torch.optim.Optimizer = cls(local_groups, **kwargs)
        self._consolidated: dict[str, Any] | None = None
        self.fresh = True  # no step taken and no state loaded: nothing to gather

    @property
    def ordered_parameters(self) -> list[torch.Tensor]:
        """Every parameter, in torch's ``state_dict`` order (group by group)."""
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("ShardedOptimizer.step takes no closure (every rank would run it)")
        for group, local in zip(self.param_groups, self.local.param_groups):
            local.update(_hyperparameters(group))
        self.local.step()
        self.fresh = False
        trainable = [p for p in self.ordered_parameters if p.requires_grad]
        broadcast_from_owners([p.detach() for p in trainable], owners=self._owners(trainable))

    def consolidate_state_dict(self, *, to: int = 0) -> None:
        """Gather the full optimizer state onto rank ``to`` (on the CPU), for ``state_dict``.
        Collective: every rank must call it. Small values (step counters) travel pickled with
        the list of what each rank holds; state tensors by broadcast, one at a time."""
        rank, world_size = self.partition.rank, self.partition.world_size
        params = self.ordered_parameters
        index = {id(p): i for i, p in enumerate(params)}
        held = {index[id(p)]: _describe(p, s) for p, s in self.local.state.items()}
        everyone = [held]
        if world_size > 1:
            everyone = [None] * world_size
            dist.all_gather_object(everyone, held)
        state: dict[torch.Tensor, dict[str, Any]] = {}
        for i in sorted(i for h in everyone for i in h):
            param, owner = params[i], self.partition.owner(params[i])
            entry = {}
            for key, value in everyone[owner][i].items():
                if isinstance(value, _Broadcast):
                    if rank == owner:
                        value = self.local.state[param][key]
                    else:
                        value = torch.empty(value.shape, dtype=value.dtype, device=param.device)
                    if world_size > 1:
                        dist.broadcast(value, src=owner)
                    value = value.cpu()
                entry[key] = value
            if rank == to:
                state[param] = entry
        if rank == to:
            self._consolidated = self._torch_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict`` of the unsharded optimizer, as consolidated last (at world
        size 1, the current one)."""
        if self._consolidated is None and self.partition.world_size == 1:
            self.consolidate_state_dict(to=0)  # nothing to gather: the current state
            consolidated, self._consolidated = self._consolidated, None
            return consolidated
        if self._consolidated is None:
            raise RuntimeError(
                "ShardedOptimizer.state_dict() needs consolidate_state_dict() on every rank "
                "first (and is only available on the rank it consolidated to)"
            )
        return self._consolidated

    def release_state_dict(self) -> None:
        """Drop the consolidated copy (it is the whole optimizer state, on one rank)."""
        self._consolidated = None

    def consolidate_fresh(self) -> None:
        """What :meth:`consolidate_state_dict` gives while :attr:`fresh` (no state on any
        rank), from this rank alone."""
        assert self.fresh, "the optimizer has state on other ranks"
        self._consolidated = self._torch_state_dict({})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an unsharded optimizer's ``state_dict`` (any world size wrote it); this rank
        keeps the state of the tensors it owns."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)
        ):
            raise ValueError(
                "loaded optimizer state does not match the optimizer's parameter groups"
            )
        by_index = {
            i: p
            for s, g in zip(saved_groups, self.param_groups)
            for i, p in zip(s["params"], g["params"])
        }
        local_index = {
            id(p): i for i, p in enumerate(p for g in self.local.param_groups for p in g["params"])
        }
        for group, saved in zip(self.param_groups, saved_groups):
            group.update(_hyperparameters(saved))
        self.local.load_state_dict(
            {
                "state": {
                    local_index[id(by_index[i])]: s
                    for i, s in state_dict["state"].items()
                    if self.partition.owns(by_index[i])
                },
                "param_groups": [
                    {**_hyperparameters(s), "params": [local_index[id(p)] for p in g["params"]]}
                    for s, g in zip(saved_groups, self.local.param_groups)
                ],
            }
        )
        self.fresh = False

    def _torch_state_dict(self, state: dict[torch.Tensor, dict[str, Any]]) -> dict[str, Any]:
        # torch's own packing (indices, groups, hooks), over the gathered state.
        kept, self.state = self.state, defaultdict(dict, state)
        try:
            return super().state_dict()
        finally:
            self.state = kept

    def _owners(self, params: Sequence[torch.Tensor]) -> list[int]:
        return [self.partition.owner(p) for p in params]


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def _describe(param: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
    """What the other ranks need to take part in gathering one tensor's state."""
    return {
        key: _Broadcast(tuple(value.shape), value.dtype)
        if torch.is_tensor(value) and value.dim() > 0 and value.device == param.device
        else (value.cpu() if torch.is_tensor(value) else value)
        for key, value in state.items()
    }
