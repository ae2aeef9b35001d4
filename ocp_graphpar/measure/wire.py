"""Count the bytes every ``torch.distributed`` collective receives, whoever issues it.

To compare with code we do not control (upstream ``gp_gemnet_t``), this module wraps the
``torch.distributed`` functions themselves for the duration of a block and applies one
accounting to every model: what a rank receives from its peers (an all-gather the other ranks'
parts, an all-to-all the rows from other ranks, a ring all-reduce ``2 (P - 1) / P`` of the
buffer, a reduce-scatter ``(P - 1) / P`` of the input).

These are the buffers on the wire, padding included: an uneven all-gather or reduce-scatter is
padded to the largest share, since NCCL's into-tensor forms need equal shares. The runtime's own
count (``ocp_graphpar.parallel.stats``) is of the rows it needed, which no buffer handed to
``torch.distributed`` carries; the tests hold the halo exchange to those rows exactly. Both are
kept because they answer different questions: what the design must move, and what moves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from ocp_graphpar.parallel.stats import CommStats


def _size(group) -> int:
    return dist.get_world_size(group=group)


def _bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _all_gather(tensor_list, tensor, group=None, **_):
    return (_size(group) - 1) * _bytes(tensor)


def _all_gather_into_tensor(output, input, group=None, **_):
    return (_size(group) - 1) * _bytes(input)


def _all_reduce(tensor, op=None, group=None, **_):
    p = _size(group)
    return 2 * (p - 1) * _bytes(tensor) // p


def _reduce_scatter(output, input_list, op=None, group=None, **_):
    p = _size(group)
    return (p - 1) * sum(_bytes(t) for t in input_list) // p


def _reduce_scatter_tensor(output, input, op=None, group=None, **_):
    p = _size(group)
    return (p - 1) * _bytes(input) // p


def _all_to_all_single(
    output, input, output_split_sizes=None, input_split_sizes=None, group=None, **_
):
    rank, p = dist.get_rank(group=group), _size(group)
    row = _bytes(output) // max(output.shape[0], 1) if output.dim() else 0
    if output_split_sizes is None:
        return _bytes(output) * (p - 1) // p
    return row * (sum(output_split_sizes) - output_split_sizes[rank])


_ACCOUNTING = {
    name: account
    for name, account in {
        "all_gather": _all_gather,
        "all_gather_into_tensor": _all_gather_into_tensor,
        "all_gather_single": _all_gather_into_tensor,  # its newer name
        "all_reduce": _all_reduce,
        "reduce_scatter": _reduce_scatter,
        "reduce_scatter_tensor": _reduce_scatter_tensor,
        "reduce_scatter_single": _reduce_scatter_tensor,  # its newer name
        "all_to_all_single": _all_to_all_single,
    }.items()
    if hasattr(dist, name)
}


@contextlib.contextmanager
def count_wire_bytes() -> Iterator[CommStats]:
    """Count every collective issued through ``torch.distributed`` inside the block."""
    stats = CommStats()
    originals = {name: getattr(dist, name) for name in _ACCOUNTING}

    def wrap(name):
        original, account = originals[name], _ACCOUNTING[name]

        def counted(*args, **kwargs):
            stats.record(name, account(*args, **kwargs))
            return original(*args, **kwargs)

        return counted

    for name in _ACCOUNTING:
        setattr(dist, name, wrap(name))
    try:
        yield stats
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
