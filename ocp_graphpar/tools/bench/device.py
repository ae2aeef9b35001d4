"""One contender's training step on one device: step time, structures per second, peak memory
and host stalls.

On a GPU the step is timed by CUDA events, memory is the caching allocator's
``torch.cuda.max_memory_allocated`` and stalls are the warnings
``torch.cuda.set_sync_debug_mode("warn")`` raises, one per synchronizing operation. On a CPU
(the tests) the same steps are timed by ``time.perf_counter``, memory is counted per tensor
storage (:mod:`ocp_graphpar.measure.memory`) and the stall column counts the operators that
would stall a GPU (:class:`~ocp_graphpar.measure.stalls.StallCounter`). Every result names
the method it was measured with.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections import Counter

import torch

from ocp_graphpar.measure.contenders import build_contender, running
from ocp_graphpar.measure.memory import step_activation_peak, tensor_bytes
from ocp_graphpar.measure.stalls import StallCounter
from ocp_graphpar.measure.steps import allocate_gradients, training_step

SYNC_WARNING = "called a synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode("warn")


def use_device(device: str | torch.device) -> torch.device:
    """``device`` with its index (``cuda`` is the current GPU), made this process's current
    CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device(
            "cuda", torch.cuda.current_device() if device.index is None else device.index
        )
        torch.cuda.set_device(device)
    return device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(model: torch.nn.Module, batch, device: torch.device, *, steps: int) -> dict:
    """Seconds of ``steps`` back-to-back training steps: per step by CUDA events on a GPU (the
    stream's time from the step's first kernel to its last, including waits for the host),
    else by ``perf_counter``; ``wall_s`` is the mean wall time per step of the whole run."""
    _synchronize(device)
    start = time.perf_counter()
    if device.type == "cuda":
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(steps)
        ]
        for begin, end in events:
            begin.record()
            training_step(model, batch)
            end.record()
        torch.cuda.synchronize(device)
        times = [begin.elapsed_time(end) / 1e3 for begin, end in events]
        method = "CUDA events"
    else:
        times = []
        for _ in range(steps):
            step_start = time.perf_counter()
            training_step(model, batch)
            times.append(time.perf_counter() - step_start)
        method = "time.perf_counter"
    wall = (time.perf_counter() - start) / max(steps, 1)
    return {
        "step_s": statistics.median(times),
        "step_s_all": times,
        "wall_s": wall,
        "method": method,
    }


def step_memory(model: torch.nn.Module, batch, device: torch.device) -> dict:
    """Peak bytes allocated during one training step: what was live before it (parameters,
    gradients, the batch) plus the step's own peak (activations and backward temporaries).
    On a GPU the total is ``torch.cuda.max_memory_allocated`` after resetting the peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
    else:
        tensors = [*model.parameters(), *(p.grad for p in model.parameters())]
        tensors += [value for _, value in batch if isinstance(value, torch.Tensor)]
        before = tensor_bytes(tensors)
    with step_activation_peak(device) as peak:  # resets the CUDA peak
        training_step(model, batch)
    method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "tensor storages"
    result = {
        "peak_bytes": before + peak["peak"],
        "activation_bytes": peak["peak"],
        "method": method,
    }
    if device.type == "cuda":
        result["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    return result


def step_stalls(model: torch.nn.Module, batch, device: torch.device) -> dict:
    """Host stalls of one training step, and its ATen operators.

    ``stalls``: on a GPU the synchronizing CUDA operations ``torch.cuda.set_sync_debug_mode``
    reports (``sites``: where, most frequent first); on a CPU the operators that would stall a
    GPU, by :class:`StallCounter`, which also gives ``host_reading_ops`` and ``aten_ops`` on
    every device (a second step, since its dispatch mode slows the step)."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                training_step(model, batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(device)
        syncs = [w for w in caught if SYNC_WARNING in str(w.message)]
        sites = Counter(f"{w.filename}:{w.lineno}" for w in syncs)
        result.update(stalls=len(syncs), sites=sites.most_common(), method="set_sync_debug_mode")
    with StallCounter() as counter:
        training_step(model, batch)
    _synchronize(device)
    result.update(
        host_reading_ops=counter.num_stalls,
        host_reading_by_op=dict(counter.stalls),
        aten_ops=counter.operators,
    )
    if device.type != "cuda":
        result.update(stalls=counter.num_stalls, sites=[], method="StallCounter")
    return result


def measure_on_device(
    name: str,
    family: str,
    model_config: dict,
    batch,
    *,
    device: str,
    warmup: int = 3,
    steps: int = 10,
) -> dict:
    """Contender ``name``'s training step (float32) on ``device``: ``warmup`` untimed steps,
    ``steps`` timed ones, then one step each for memory and stalls.

    Structures per second are the batch's systems over the median step time.
    """
    device = use_device(device)
    batch = batch.to(device)
    with running(name):
        model = build_contender(name, family, model_config).to(device).train()
        allocate_gradients(model)  # as from the second step of training on
        for _ in range(warmup):
            training_step(model, batch)
        timing = step_times(model, batch, device, steps=steps)
        memory = step_memory(model, batch, device)
        stalls = step_stalls(model, batch, device)
    systems = int(batch.natoms.numel())
    return {
        "device": str(device),
        "warmup": warmup,
        "steps": steps,
        "systems": systems,
        "structures_per_s": systems / timing["step_s"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "timing": timing,
        "memory": memory,
        "stalls": stalls,
    }
