"""Peak memory of a training step, by what holds it: parameters, gradients, optimizer state, EMA,
activations.

On a GPU the CUDA allocator keeps the counts (``torch.cuda.max_memory_allocated``). On CPU no
allocator does, so :class:`LiveTensorBytes` counts them itself: a dispatch mode that sees every
tensor an operator returns, holds a weak reference to its storage and adds the storage's bytes
while it lives. Both report the same quantity, the peak of bytes allocated by the step beyond
what was live when it began; with parameter gradients allocated beforehand that is the step's
activations and the temporaries of its backward pass.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

Kind = tuple[tuple[int, ...], int]  # a storage's creating tensor: (shape, element size)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the storages created inside the block that are still alive, and their peak.

    Storages are counted once however many views share them. With ``record_shapes``,
    :meth:`phase_moments` lists, for each phase (:meth:`mark_phase` starts the next), what was
    live at every moment where an allocation is followed by a release: the moments that can
    hold the phase's peak. Which of them does depends on the sizes (at other widths or on
    another graph a different block's tensors dominate), so the memory planner keeps them all
    and evaluates each at the real sizes.
    """

    def __init__(self, record_shapes: bool = False) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.record_shapes = record_shapes
        # key: storage address; value: (weak reference, bytes, kind, allocation number)
        self._storages: dict[int, tuple[weakref.ref, int, Kind, int]] = {}
        self._kinds: Counter[Kind] = Counter()  # live storages by kind
        self._phases: list[list[dict[Kind, int]]] = [[]]
        self._allocations = 0
        self._rising = False  # allocated since the last release
        self._moment_allocations = 0  # allocations before the last recorded moment
        self._moment_released = True  # a storage live at that moment has been released since

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # An output sharing an input's storage (a view, an in-place or out= op) allocated
        # nothing; counting it would count a parameter or a prior gradient as new memory.
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for tensor in tree_flatten(out)[0]:
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.device.type != "meta"
                and tensor.untyped_storage().data_ptr() not in inputs
            ):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._storages and self._storages[key][0]() is not None:
            return
        nbytes = storage.nbytes()
        kind = (tuple(tensor.shape), tensor.element_size())
        self._allocations += 1
        self._storages[key] = (
            weakref.ref(storage, lambda _, key=key: self._release(key)),
            nbytes,
            kind,
            self._allocations,
        )
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        if self.record_shapes:
            self._kinds[kind] += 1
            self._rising = True

    def _release(self, key: int) -> None:
        entry = self._storages.pop(key, None)
        if entry is None:
            return
        self.live -= entry[1]
        if self.record_shapes:
            if self._rising:
                self._record_moment()
            self._kinds[entry[2]] -= 1
            if not self._kinds[entry[2]]:
                del self._kinds[entry[2]]
            if entry[3] <= self._moment_allocations:
                self._moment_released = True

    def _record_moment(self) -> None:
        """Keep what is live now. When nothing live at the previous moment has been released
        since, now holds all of it and more: the previous moment can never be the peak."""
        moments = self._phases[-1]
        if moments and not self._moment_released:
            moments[-1] = dict(self._kinds)
        else:
            moments.append(dict(self._kinds))
        self._rising = self._moment_released = False
        self._moment_allocations = self._allocations

    def mark_phase(self) -> None:
        """Close the current phase (e.g. the forward pass): its moments are kept apart, and the
        next phase's moments start from what is live now."""
        if self.record_shapes:
            if self._rising:
                self._record_moment()
            self._phases.append([])
            self._moment_released = True
            self._rising = True  # what is live now is the next phase's first moment

    def phase_moments(self) -> list[list[dict[Kind, int]]]:
        """``[{(shape, element size): live count}, ...]`` per phase, the current phase last."""
        if self._rising:
            self._record_moment()
        return [list(moments) for moments in self._phases]


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def step_activation_peak(device: torch.device) -> Iterator[dict]:
    """The peak bytes a block allocates beyond what was live when it began (``result["peak"]``)."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak"] = torch.cuda.max_memory_allocated(device) - start
    else:
        with LiveTensorBytes() as tracker:
            yield result
        result["peak"] = tracker.peak
