"""Index arithmetic shared by the plan builders: owners, local rows, slots and per-rank counts.

Every function is a pure map from tensors every rank holds identically to tensors every rank
computes identically, so plans agree across ranks without communication.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class RankMajor:
    """Items grouped by owning rank, ascending id within a rank: the order of a rank-major
    concatenation of every rank's owned rows.

    Attributes:
        counts: ``(P,)`` items owned by each rank.
        starts: ``(P,)`` first row of each rank's block.
        order: ``(M,)`` item ids in rank-major order.
        position: ``(M,)`` row of each item in that order (the inverse of ``order``).
        local: ``(M,)`` row of each item among the items its owner holds.
    """

    counts: Tensor
    starts: Tensor
    order: Tensor
    position: Tensor
    local: Tensor

    def owned_by(self, rank: int) -> Tensor:
        """``(n,)`` ids of the items ``rank`` owns, ascending."""
        start = int(self.starts[rank])
        return self.order[start : start + int(self.counts[rank])]


def rank_major(owner: Tensor, *, size: int) -> RankMajor:
    """Group items ``owner (M,)`` by rank, as :class:`RankMajor`."""
    counts = rank_bincount(owner, size=size)
    starts = torch.cumsum(counts, 0) - counts
    order = stable_argsort(owner, num_keys=size)
    position = torch.empty_like(order)
    position.scatter_(0, order, torch.arange(order.numel(), device=owner.device))
    return RankMajor(
        counts=counts,
        starts=starts,
        order=order,
        position=position,
        local=position - starts.index_select(0, owner),
    )


def stable_argsort(keys: Tensor, *, num_keys: int) -> Tensor:
    """``argsort`` along the first axis of integer ``keys`` in ``[0, num_keys)``, ties in index
    order.

    On the host, keys that fit 16 bits are sorted by numpy's radix sort: linear in the number of
    keys, where torch's comparison sort costs ``M log M`` and dominates a plan's build for large
    batches.
    """
    if keys.device.type == "cpu" and num_keys <= _INT16_KEYS:
        narrow = np.int8 if num_keys <= _INT8_KEYS else np.int16
        order = np.argsort(keys.numpy().astype(narrow), axis=0, kind="stable")
        return torch.from_numpy(order.astype(np.int64, copy=False))
    return torch.sort(keys, dim=0, stable=True).indices


_INT8_KEYS = np.iinfo(np.int8).max + 1
_INT16_KEYS = np.iinfo(np.int16).max + 1


def slots(num_items: int, *, owned: Tensor, received: Tensor) -> Tensor:
    """Global id -> row of ``cat([owned, received])``, -1 for items this rank does not hold."""
    held = torch.cat([owned, received])
    slot = torch.full((num_items,), -1, dtype=torch.long, device=owned.device)
    return slot.scatter_(0, held, torch.arange(held.numel(), device=owned.device))


def rank_bincount(x: Tensor, *, size: int) -> Tensor:
    """``(P,)`` occurrences of each rank in ``x``."""
    return torch.bincount(x, minlength=size)[:size]


def rank_counts(x: Tensor, *, size: int) -> list[int]:
    """Occurrences of each rank in ``x``, as a list (collective split sizes)."""
    return rank_bincount(x, size=size).tolist()


def sum_by_rank(values: Tensor, owner: Tensor, *, size: int) -> list[int]:
    """Integer sum of ``values`` over the items each rank owns."""
    totals = torch.zeros(size, dtype=torch.long, device=owner.device)
    return totals.index_add_(0, owner, values.long()).tolist()
