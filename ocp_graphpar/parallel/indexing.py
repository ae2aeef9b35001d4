"""Index arithmetic shared by the plan builders: owners, local rows, slots and per-rank counts.

Every function is a pure map from tensors every rank holds identically to tensors every rank
computes identically, so plans agree across ranks without communication.
"""

from __future__ import annotations

import torch
from torch import Tensor


def local_rows(owner: Tensor, *, size: int) -> Tensor:
    """``(M,)`` row of each item among the items its owner holds (ascending global id)."""
    n = owner.numel()
    order = torch.argsort(owner * max(n, 1) + torch.arange(n, device=owner.device))
    local = torch.empty_like(owner)
    local[order] = (
        torch.arange(n, device=owner.device) - rank_starts(owner, size=size)[owner[order]]
    )
    return local


def rank_starts(owner: Tensor, *, size: int) -> Tensor:
    """``(P,)`` first row of each rank's block in a rank-major concatenation."""
    counts = rank_bincount(owner, size=size)
    return torch.cumsum(counts, 0) - counts


def slots(num_items: int, *, owned: Tensor, received: Tensor) -> Tensor:
    """Global id -> row of ``cat([owned, received])``, -1 for items this rank does not hold."""
    slot = torch.full((num_items,), -1, dtype=torch.long, device=owned.device)
    slot[owned] = torch.arange(owned.numel(), device=owned.device)
    slot[received] = torch.arange(received.numel(), device=owned.device) + owned.numel()
    return slot


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
