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
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the storages created inside the block that are still alive, and their peak.

    Storages are counted once however many views share them. With ``record_shapes``,
    ``phase_peaks`` lists the shapes of the tensors that created the storages live at the peak
    of each phase (:meth:`mark_phase` starts the next), for the memory planner.
    """

    def __init__(self, record_shapes: bool = False) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.record_shapes = record_shapes
        self._closed_phases: list[list[tuple[tuple[int, ...], int]]] = []
        self._phase_peak = 0
        self._phase_shapes: list[tuple[tuple[int, ...], int]] = []
        self._storages: dict[int, tuple[weakref.ref, int, tuple[int, ...], int]] = {}

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
        self._storages[key] = (
            weakref.ref(storage, lambda _, key=key: self._release(key)),
            nbytes,
            tuple(tensor.shape),
            tensor.element_size(),
        )
        self.live += nbytes
        if self.live > self._phase_peak:
            self._phase_peak = self.live
            if self.record_shapes:
                self._phase_shapes = self._live_shapes()
        self.peak = max(self.peak, self.live)

    def mark_phase(self) -> None:
        """Close the current phase (e.g. the forward pass): its peak is kept apart, and the
        next phase's peak is tracked from what is live now."""
        self._closed_phases.append(self._phase_shapes)
        self._phase_peak = self.live
        self._phase_shapes = self._live_shapes() if self.record_shapes else []

    @property
    def phase_peaks(self) -> list[list[tuple[tuple[int, ...], int]]]:
        """Shapes live at each phase's peak, the current phase last."""
        return [*self._closed_phases, self._phase_shapes]

    def _live_shapes(self) -> list[tuple[tuple[int, ...], int]]:
        return [(shape, size) for _, _, shape, size in self._storages.values()]

    def _release(self, key: int) -> None:
        entry = self._storages.pop(key, None)
        if entry is not None:
            self.live -= entry[1]


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@dataclass
class StepMemory:
    """Per-rank bytes of one training step. ``activations`` is the peak the step adds."""

    parameters: int
    gradients: int
    activations: int
    optimizer: int = 0
    ema: int = 0

    @property
    def peak(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.ema + self.activations


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
