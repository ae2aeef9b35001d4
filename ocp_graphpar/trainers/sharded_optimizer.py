"""Optimizer state partitioned over every rank of the world (ZeRO stage 1), by whole tensors.

Under DDP x GP every rank holds the same parameters and, after DDP's all-reduce, the same
(already scaled) gradients, so the update of a parameter tensor can be computed by one rank and
sent to the others. :class:`Partition` gives each tensor an owner, balancing elements over the
ranks; :class:`ShardedOptimizer` runs the configured torch optimizer (same class, same param
groups and hyperparameters) on the tensors this rank owns and then broadcasts the updated
tensors from their owners, packed into flat buckets (:func:`broadcast_from_owners`): a few
large broadcasts rather than one per tensor, which is what NCCL runs at bandwidth. Per rank the
optimizer state is about ``1 / world`` of the unsharded one.

Whole tensors, not slices: any optimizer whose update of a tensor reads only that tensor's
gradient and state gives the unsharded step exactly (:data:`PER_TENSOR_OPTIMIZERS`), and the
state of a tensor stays in one piece, so :meth:`ShardedOptimizer.consolidate_state_dict` can
rebuild torch's own ``state_dict`` (same parameter indices and groups) for upstream checkpoints.
"""

from __future__ import annotations

import heapq
import inspect
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

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


#: Bytes per flat broadcast unless configured: DDP's default bucket (25 MiB), large enough for
#: NCCL to run at bandwidth and small enough that the buffers in flight cost little memory.
DEFAULT_BUCKET_BYTES = 25 * 2**20
#: Buckets in flight at once: packing or unpacking one overlaps the next one's broadcast, and
#: the extra memory stays at most this many buckets (not a second copy of the model).
BUCKETS_IN_FLIGHT = 2


def checked_bucket_bytes(bucket_bytes: int) -> int:
    """``bucket_bytes``, if it is a positive number of bytes."""
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be a positive int, not {bucket_bytes!r}")
    return bucket_bytes


@dataclass(frozen=True)
class Bucket:
    """Tensors of one owner, dtype and device that travel as one flat broadcast."""

    owner: int
    indices: tuple[int, ...]  # positions in the list of tensors broadcast
    numel: int  # elements of the flat buffer: the sum over the tensors


def plan_buckets(
    tensors: Sequence[torch.Tensor], *, owners: Sequence[int], bucket_bytes: int
) -> list[Bucket]:
    """Group ``tensors`` by (owner, dtype, device), in list order, and cut each group into
    buckets of at most ``bucket_bytes``; a tensor larger than that gets a bucket of its own.

    A function of the tensors' sizes, dtypes, devices and owners only, so every rank plans
    the same buckets in the same order (each bucket is one collective).
    """
    checked_bucket_bytes(bucket_bytes)
    buckets: list[Bucket] = []
    # The bucket each (owner, dtype, device) is filling: its tensors' indices and bytes.
    filling: dict[tuple[int, torch.dtype, torch.device], tuple[list[int], int]] = {}
    for index, (tensor, owner) in enumerate(zip(tensors, owners, strict=True)):
        key = (owner, tensor.dtype, tensor.device)
        nbytes = tensor.numel() * tensor.element_size()
        indices, held = filling.get(key, ([], 0))
        if indices and held + nbytes > bucket_bytes:
            buckets.append(_bucket(tensors, indices, owner=owner))
            indices, held = [], 0
        indices.append(index)
        filling[key] = (indices, held + nbytes)
    buckets.extend(_bucket(tensors, indices, owner=key[0]) for key, (indices, _) in filling.items())
    return buckets


def _bucket(tensors: Sequence[torch.Tensor], indices: list[int], *, owner: int) -> Bucket:
    return Bucket(
        owner=owner, indices=tuple(indices), numel=sum(tensors[i].numel() for i in indices)
    )


def broadcast_from_owners(
    tensors: Sequence[torch.Tensor],
    *,
    owners: Sequence[int],
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> None:
    """Overwrite each tensor, in place on every rank, with its owner's copy.

    The tensors travel in the flat buckets of :func:`plan_buckets`: the owner packs a bucket's
    tensors into one 1-D buffer of ``bucket.numel`` elements, broadcasts it, and every other
    rank unpacks it into its tensors. A bucket of one contiguous tensor is broadcast as the
    tensor itself (no copies). Bit for bit the same as one broadcast per tensor: packing and
    unpacking only copy. All ranks must call this with tensors of the same shapes, dtypes and
    devices, and the same owners, in the same order.
    """
    rank, world_size = world()
    if world_size == 1:
        return
    in_flight: deque[tuple[list[torch.Tensor], torch.Tensor, Any]] = deque()
    with torch.no_grad():
        for bucket in plan_buckets(tensors, owners=owners, bucket_bytes=bucket_bytes):
            if len(in_flight) == BUCKETS_IN_FLIGHT:
                _unpack(*in_flight.popleft())
            members = [tensors[i] for i in bucket.indices]
            flat = _bucket_buffer(members, numel=bucket.numel, owned=bucket.owner == rank)
            work = dist.broadcast(flat, src=bucket.owner, async_op=True)
            # The owner's tensors already hold the values: nothing to unpack there.
            in_flight.append(([] if bucket.owner == rank else members, flat, work))
        while in_flight:
            _unpack(*in_flight.popleft())


def _bucket_buffer(members: list[torch.Tensor], *, numel: int, owned: bool) -> torch.Tensor:
    """What one bucket broadcasts: the tensor itself when it is alone and contiguous; else the
    owner's tensors packed, shape ``(numel,)``, or an empty buffer of that shape to receive."""
    if len(members) == 1 and members[0].is_contiguous():
        return members[0]
    if owned:
        return _flatten_dense_tensors(members)
    return torch.empty(numel, dtype=members[0].dtype, device=members[0].device)


def _unpack(members: list[torch.Tensor], flat: torch.Tensor, work: Any) -> None:
    """Wait for a bucket's broadcast and copy its buffer into the tensors it packs (none on
    the owner, nor where the buffer is the tensor itself)."""
    work.wait()
    if not members or flat is members[0]:
        return
    torch._foreach_copy_(members, list(_unflatten_dense_tensors(flat, members)))


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
    into the local optimizer's groups, steps it and broadcasts the updated tensors in flat
    buckets of at most ``bucket_bytes`` (:func:`broadcast_from_owners`). ``state_dict`` is
    torch's format for the full optimizer, available after the collective
    :meth:`consolidate_state_dict`; ``load_state_dict`` takes that format and keeps (copies)
    this rank's share.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        partition: Partition,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        groups = [{**g, "params": list(g["params"])} for g in optimizer.param_groups]
        super().__init__(groups, optimizer.defaults)
        self.partition = partition
        self.bucket_bytes = checked_bucket_bytes(bucket_bytes)
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
        broadcast_from_owners(
            [p.detach() for p in trainable],
            owners=self._owners(trainable),
            bucket_bytes=self.bucket_bytes,
        )

    def consolidate_state_dict(self, *, to: int = 0) -> None:
        """Gather the full optimizer state onto rank ``to`` (on the CPU), for ``state_dict``.
        Collective: every rank must call it. Small values (step counters) travel pickled with
        the list of what each rank holds; state tensors by broadcast, one at a time, and only
        rank ``to`` copies them to the host."""
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
                    if rank == to:
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
        keeps a copy of the state of the tensors it owns, on their device. A copy, never the
        given tensors: they may be mapped from a checkpoint file (see
        :func:`~ocp_graphpar.trainers.sharded_state.read_checkpoint`), which must not stay
        mapped, nor take the optimizer's writes."""
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
                    local_index[id(by_index[i])]: _owned_copy(s, by_index[i])
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


def _owned_copy(state: dict[str, Any], param: torch.Tensor) -> dict[str, Any]:
    """One tensor's loaded state with its tensors copied: buffers straight onto the
    parameter's device (one copy; torch's ``load_state_dict`` then casts only if the dtype
    differs), the step counter where it is, as torch chooses its device per optimizer."""
    return {key: _copy_state_value(key, value, param) for key, value in state.items()}


def _copy_state_value(key: str, value: Any, param: torch.Tensor) -> Any:
    if not torch.is_tensor(value):
        return value
    if key == "step":
        return value.clone()
    return value.to(device=param.device, copy=True)


def _describe(param: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
    """What the other ranks need to take part in gathering one tensor's state."""
    return {
        key: _Broadcast(tuple(value.shape), value.dtype)
        if torch.is_tensor(value) and value.dim() > 0 and value.device == param.device
        else (value.cpu() if torch.is_tensor(value) else value)
        for key, value in state.items()
    }
