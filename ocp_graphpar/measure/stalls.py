"""Count the operators of a step that would make a CUDA stream wait for the host.

On a GPU, an operator whose output size or value the host must read (``.item()``, ``nonzero``,
``unique``, a boolean mask, ``bincount`` without a fixed length) blocks the CPU until the
stream has drained, so kernels stop queueing ahead. :class:`StallCounter` is a dispatch mode
that counts those operators, and every ATen operator, on any device, so a CPU test can hold a
step to a stall budget that holds on the GPU too (where ``torch.cuda.set_sync_debug_mode``
confirms it).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten

#: The warning ``torch.cuda.set_sync_debug_mode("warn")`` raises at each synchronizing operation.
SYNC_WARNING = "called a synchronizing CUDA operation"

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


def step_stalls(step: Callable[[], object], device: torch.device) -> dict:
    """Host stalls of one ``step()``, and its ATen operators.

    ``stalls``: on a GPU the synchronizing operations ``torch.cuda.set_sync_debug_mode``
    reports (``sites``: where, most frequent first); elsewhere the operators that would stall
    a GPU, by :class:`StallCounter`, which also gives ``host_reading_ops`` and ``aten_ops`` on
    every device (from a second step on a GPU, since its dispatch mode slows the step).
    """
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(device)
        syncs = [w for w in caught if SYNC_WARNING in str(w.message)]
        sites = Counter(f"{w.filename}:{w.lineno}" for w in syncs)
        result.update(stalls=len(syncs), sites=sites.most_common(), method="set_sync_debug_mode")
    with StallCounter() as counter:
        step()
    result.update(
        host_reading_ops=counter.num_stalls,
        host_reading_by_op=dict(counter.stalls),
        aten_ops=counter.operators,
    )
    if device.type != "cuda":
        result.update(stalls=counter.num_stalls, sites=[], method="StallCounter")
    return result
