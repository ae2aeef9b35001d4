"""Count the operators of a step that would make a CUDA stream wait for the host.

On a GPU, an operator whose output size or value the host must read (``.item()``, ``nonzero``,
``unique``, a boolean mask, ``bincount`` without a fixed length) blocks the CPU until the
stream has drained, so kernels stop queueing ahead. :class:`StallCounter` is a dispatch mode
that counts those operators, and every ATen operator, on any device, so a CPU test can hold a
step to a stall budget that holds on the GPU too (where ``torch.cuda.set_sync_debug_mode``
confirms it).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten

# Operators whose result the host reads (a value, or a data-dependent output size).
_ALWAYS_STALL = {
    _aten._local_scalar_dense.default,  # .item(), int(), float(), bool() of a tensor
    _aten.nonzero.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.masked_select.default,
}


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _stalls(func, args, kwargs) -> bool:
    if func in _ALWAYS_STALL:
        return True
    packet = func.overloadpacket
    if packet is _aten.bincount:
        return True  # the output length is max(x) + 1, read on the host
    if packet is _aten.repeat_interleave:
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    if packet in (_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_):
        return _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    return False


class StallCounter(TorchDispatchMode):
    """Within ``with StallCounter() as counter:``, ``counter.stalls`` counts host-stalling
    operators by name and ``counter.operators`` every ATen operator dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.stalls: Counter[str] = Counter()
        self.operators = 0

    @property
    def num_stalls(self) -> int:
        return sum(self.stalls.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.operators += 1
        if _stalls(func, args, kwargs):
            self.stalls[str(func.overloadpacket.__name__)] += 1
        return func(*args, **kwargs)
