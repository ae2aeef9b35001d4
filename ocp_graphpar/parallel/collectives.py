"""Collectives over the GP group, each an autograd function whose backward is its adjoint.

A tensor on a GP rank is in one of three states: *sharded* (each rank holds its own rows),
*partial* (the true value is the sum over ranks) or *replicated* (every rank holds the same
value). The functions below move tensors between states, and each backward is the adjoint
collective built from the same functions, so the backward is differentiable too and
``create_graph=True`` (forces as ``-dE/dpos``, then a loss on them) stays exact:

==========================  =====================  ==================================
function                    forward                backward (adjoint)
==========================  =====================  ==================================
``all_to_all``              uneven all-to-all      all-to-all with splits swapped
``gather_rows``             all-gather of shards   reduce-scatter
``reduce_scatter_rows``     reduce-scatter         all-gather
``gather_replicated``       all-gather of shards   own rows of the gradient (no call)
``slice_rows``              own rows (no call)     all-gather (``gather_replicated``)
``reduce_partial``          all-reduce (sum)       identity (``copy_replicated``)
``copy_replicated``         identity               all-reduce (``reduce_partial``)
==========================  =====================  ==================================

The two gathers differ in who consumes the result. Every rank runs backward from the same
(replicated) loss, so a tensor that every rank then uses identically (model outputs, losses,
metrics) has a *replicated* gradient, and its shards' gradients are plain slices of it
(``gather_replicated``). A tensor that each rank uses for its own part of the work has a
*partial* gradient on each rank, which must be summed (``gather_rows``).

Gathers and reduce-scatters use the into-tensor forms (NCCL's native all-gather and
reduce-scatter; gloo has them too), padded only when the ranks' shares are uneven, and every
buffer handed to a backend is contiguous (NCCL refuses strided tensors).

With no GP group (or a group of one rank) every function is the identity and issues no call.
Row counts come from the partition plan, which every rank builds identically, so no collective
ever exchanges sizes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ocp_graphpar.parallel.groups import gp_group, gp_rank, gp_size
from ocp_graphpar.parallel.stats import comm_stats


def _nbytes(rows: int, like: Tensor) -> int:
    return rows * math.prod(like.shape[1:]) * like.element_size()


def _row_shape(x: Tensor, rows: int) -> tuple[int, ...]:
    return (rows, *x.shape[1:])


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        ctx.counts = (send_counts, recv_counts)
        out = x.new_empty(_row_shape(x, sum(recv_counts)))
        dist.all_to_all_single(out, x.contiguous(), recv_counts, send_counts, group=gp_group())
        comm_stats().record("all_to_all", _nbytes(sum(recv_counts) - recv_counts[gp_rank()], x))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        send_counts, recv_counts = ctx.counts
        return _AllToAll.apply(grad, recv_counts, send_counts), None, None


def _native(name: str, before_torch_2_13: str):
    """A torch.distributed collective by its current name, or the name older torch knows it by
    (looked up per call, so tools that wrap ``torch.distributed`` see it)."""
    return getattr(dist, name, None) or getattr(dist, before_torch_2_13)


def _padded(x: Tensor, rows: int) -> Tensor:
    """``x`` with zero rows appended up to ``rows``, as one contiguous buffer."""
    if x.shape[0] == rows:
        return x.contiguous()
    out = x.new_zeros(_row_shape(x, rows))
    out[: x.shape[0]] = x
    return out


def _all_gather_rows(x: Tensor, counts: list[int]) -> Tensor:
    # One into-tensor gather (NCCL's native all-gather; gloo has it too). Equal shares need no
    # padding; uneven ones are padded to the largest and trimmed after.
    width = max(counts)
    out = x.new_empty(_row_shape(x, width * len(counts)))
    _native("all_gather_single", "all_gather_into_tensor")(out, _padded(x, width), group=gp_group())
    comm_stats().record("all_gather", _nbytes(sum(counts) - counts[gp_rank()], x))
    if all(n == width for n in counts):
        return out
    blocks = out.view(len(counts), width, *x.shape[1:])
    return torch.cat([block[:n] for block, n in zip(blocks, counts)])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int]) -> Tensor:
        ctx.counts = counts
        return _all_gather_rows(x, counts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ReduceScatterRows.apply(grad, ctx.counts), None


class _ReduceScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int]) -> Tensor:
        ctx.counts = counts
        width = max(counts)
        if all(n == width for n in counts):
            send = x.contiguous()
        else:
            send = x.new_zeros(_row_shape(x, width * len(counts)))
            for block, piece in zip(send.split(width), x.split(counts)):
                block[: piece.shape[0]] = piece
        out = x.new_empty(_row_shape(x, width))
        _native("reduce_scatter_single", "reduce_scatter_tensor")(out, send, group=gp_group())
        p = len(counts)
        comm_stats().record("reduce_scatter", _nbytes(sum(counts), x) * (p - 1) // p)
        return out[: counts[gp_rank()]]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _GatherRows.apply(grad, ctx.counts), None


class _GatherReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int]) -> Tensor:
        ctx.counts = counts
        return _all_gather_rows(x, counts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _SliceRows.apply(grad, ctx.counts), None


class _SliceRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int]) -> Tensor:
        ctx.counts = counts
        start = sum(counts[: gp_rank()])
        return x[start : start + counts[gp_rank()]].clone(memory_format=torch.contiguous_format)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _GatherReplicated.apply(grad, ctx.counts), None


class _ReducePartial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=gp_group())
        p = gp_size()
        comm_stats().record("all_reduce", 2 * (p - 1) * x.numel() * x.element_size() // p)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _CopyReplicated.apply(grad)


class _CopyReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ReducePartial.apply(grad)


def all_to_all(x: Tensor, send_counts: Sequence[int], recv_counts: Sequence[int]) -> Tensor:
    """Send ``x``'s rows to the GP peers in rank order, ``send_counts[q]`` rows to peer ``q``.

    Args:
        x: ``(sum(send_counts), *F)`` rows grouped by destination rank.
    Returns:
        ``(sum(recv_counts), *F)`` rows grouped by source rank.
    """
    if gp_size() == 1:
        return x
    return _AllToAll.apply(x, list(send_counts), list(recv_counts))


def gather_rows(x: Tensor, counts: Sequence[int]) -> Tensor:
    """Concatenate every rank's rows for consumers that use them rank by rank
    (sharded -> replicated values with partial gradients).

    Args:
        x: ``(counts[rank], *F)``.
    Returns:
        ``(sum(counts), *F)``, identical on every rank; the gradient is reduce-scattered.
    """
    if gp_size() == 1:
        return x
    return _GatherRows.apply(x, list(counts))


def gather_replicated(x: Tensor, counts: Sequence[int]) -> Tensor:
    """Concatenate every rank's rows for consumers that every rank runs identically
    (sharded -> replicated), e.g. per-atom model outputs that go into the loss.

    Args:
        x: ``(counts[rank], *F)``.
    Returns:
        ``(sum(counts), *F)``; the gradient of the shard is this rank's rows of the (replicated)
        gradient, so the backward pass needs no communication.
    """
    if gp_size() == 1:
        return x
    return _GatherReplicated.apply(x, list(counts))


def slice_rows(x: Tensor, counts: Sequence[int]) -> Tensor:
    """This rank's rows of a replicated tensor (replicated -> sharded); the gradient is gathered.

    Args:
        x: ``(sum(counts), *F)``.
    Returns:
        ``(counts[rank], *F)``.
    """
    if gp_size() == 1:
        return x
    return _SliceRows.apply(x, list(counts))


def reduce_scatter_rows(x: Tensor, counts: Sequence[int]) -> Tensor:
    """Sum ``x`` over the ranks and keep this rank's block of rows (partial -> sharded).

    Args:
        x: ``(sum(counts), *F)`` partial sums.
    Returns:
        ``(counts[rank], *F)``.
    """
    if gp_size() == 1:
        return x
    return _ReduceScatterRows.apply(x, list(counts))


def reduce_partial(x: Tensor) -> Tensor:
    """Sum partial results over the GP group (partial -> replicated); the gradient passes as is."""
    if gp_size() == 1:
        return x
    return _ReducePartial.apply(x)


def copy_replicated(x: Tensor) -> Tensor:
    """Mark a replicated input that each rank uses for its own part: its gradient is all-reduced."""
    if gp_size() == 1:
        return x
    return _CopyReplicated.apply(x)
