"""Halos: the rows a rank needs but a peer owns, and the exchange that brings them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ocp_graphpar.parallel.collectives import all_to_all
from ocp_graphpar.parallel.indexing import rank_counts


@dataclass(frozen=True)
class Halo:
    """Rows a rank needs but does not own, and the rows it sends to peers that need its own.

    Attributes:
        send_index: ``(n_send,)`` local rows to send, grouped by destination rank.
        send_counts: rows sent to each GP rank, ``(P,)``.
        recv_counts: rows received from each GP rank, ``(P,)``.
        recv_global: ``(n_recv,)`` global ids of the received rows, in arrival order.
    """

    send_index: Tensor
    send_counts: list[int]
    recv_counts: list[int]
    recv_global: Tensor

    @property
    def num_recv(self) -> int:
        return sum(self.recv_counts)

    def to(self, device: torch.device) -> Halo:
        """The halo with its index tensors on ``device``."""
        return replace(
            self, send_index=self.send_index.to(device), recv_global=self.recv_global.to(device)
        )

    def extend(self, owned: Tensor) -> Tensor:
        """``owned (n_owned, *F)`` followed by the received rows, ``(n_owned + n_recv, *F)``:
        the rows a rank's work indexes. In a GP group of one rank that is ``owned`` itself."""
        if len(self.send_counts) == 1:
            return owned
        return torch.cat([owned, self.exchange(owned)])

    def exchange(self, owned: Tensor) -> Tensor:
        """Rows of peers' owned tensors that this rank needs.

        Args:
            owned: ``(n_owned, *F)`` this rank's rows.
        Returns:
            ``(n_recv, *F)``; the gradient flows back to the owners (the reverse exchange).
        """
        return all_to_all(owned[self.send_index], self.send_counts, self.recv_counts)


def empty_halo(*, device: torch.device) -> Halo:
    """The halo of a GP group of one rank: nothing to send or receive."""
    none = torch.zeros(0, dtype=torch.long, device=device)
    return Halo(send_index=none, send_counts=[0], recv_counts=[0], recv_global=none)


def build_halo(
    *,
    requester: Tensor,
    item: Tensor,
    item_owner: Tensor,
    owned: Tensor,
    size: int,
    rank: int,
) -> Halo:
    """The halo of ``rank`` for (requester rank, item) pairs.

    Args:
        requester, item: ``(M,)`` pairs (rank that needs the item, global item id), the same on
            every rank; duplicates and pairs whose requester owns the item are dropped.
        item_owner: ``(num_items,)`` owning rank of every item.
        owned: ``(n_owned,)`` ids of the items ``rank`` owns, ascending (its local rows).
    """
    owner = item_owner.index_select(0, item)
    # only the pairs this rank receives or sends: a 1/P share of the cut, cheap to sort
    involved = ((requester == rank) | (owner == rank)) & (owner != requester)
    pairs = involved.nonzero().flatten()
    req, it = _unique_pairs(
        requester.index_select(0, pairs), item.index_select(0, pairs), item_owner.numel()
    )
    own = item_owner.index_select(0, it)

    mine = (req == rank).nonzero().flatten()
    arrival = torch.argsort(own.index_select(0, mine), stable=True)
    sending = (own == rank).nonzero().flatten()
    return Halo(
        send_index=torch.searchsorted(owned, it.index_select(0, sending)),
        send_counts=rank_counts(req.index_select(0, sending), size=size),
        recv_counts=rank_counts(own.index_select(0, mine), size=size),
        recv_global=it.index_select(0, mine).index_select(0, arrival),
    )


def halo_sizes(*, requester: Tensor, item: Tensor, item_owner: Tensor, size: int) -> list[int]:
    """Rows each rank receives in the halo of (requester rank, item) pairs (see
    :func:`build_halo`), ``(P,)``."""
    remote = (item_owner.index_select(0, item) != requester).nonzero().flatten()
    req, _ = _unique_pairs(
        requester.index_select(0, remote), item.index_select(0, remote), item_owner.numel()
    )
    return rank_counts(req, size=size)


def _unique_pairs(rank: Tensor, item: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """Distinct (rank, item) pairs, sorted by rank, then item."""
    num_items = max(num_items, 1)
    key = torch.unique(rank * num_items + item)
    return key // num_items, key % num_items
