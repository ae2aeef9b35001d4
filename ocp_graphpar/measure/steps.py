"""One contender's training step on one rank: traffic, memory, load and time.

A training step here is what fairchem's trainer does between two optimizer steps: forward, the
S2EF loss (energy MAE + 100 x force L2-MAE, as the GemNet-XL config) and backward. The optimizer
step and the EMA update touch only replicated parameters, so they cost the same for every
contender and every P; their state is measured once (:func:`contender_state_bytes`). An inference
workload measures a prediction instead (:func:`inference_call`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
import torch.distributed as dist

from ocp_graphpar.measure.contenders import build_contender, running
from ocp_graphpar.measure.flops import MatmulFlops
from ocp_graphpar.measure.memory import step_activation_peak, tensor_bytes
from ocp_graphpar.measure.stalls import step_stalls
from ocp_graphpar.measure.wire import count_wire_bytes
from ocp_graphpar.parallel import gp_rank, recording_plans

FORCE_COEFFICIENT = 100.0


def training_step(
    model: torch.nn.Module, batch, *, after_forward: Callable[[], None] | None = None
) -> dict[str, torch.Tensor]:
    """Forward, loss and backward of one S2EF training step; returns the outputs, detached
    (``energy (B, *)``, ``forces (N, 3)``). ``after_forward`` is called between the forward
    pass and the loss."""
    out = model(batch.clone())
    if after_forward is not None:
        after_forward()
    energy = out["energy"].reshape(-1)
    loss = (energy - batch.energy.to(energy.dtype)).abs().mean()
    force_error = (out["forces"] - batch.forces.to(energy.dtype)).norm(dim=-1).mean()
    (loss + FORCE_COEFFICIENT * force_error).backward()
    return {key: value.detach() for key, value in out.items()}


def inference_call(model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    """Energies ``(B, *)`` and forces ``(N, 3)`` of one prediction, called as fairchem's
    ``trainer.predict`` and ASE calculators call the model: under ``torch.no_grad()`` (a model
    with ``-dE/dpos`` forces enables grad for that pass itself and keeps no second-order graph).
    The model is expected in eval mode."""
    with torch.no_grad():
        return model(batch.clone())


def allocate_gradients(model: torch.nn.Module) -> None:
    """Gradients exist before the step, as from the second step on in training."""
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def measure_contender(
    name: str,
    family: str,
    model_config: dict,
    batch,
    repeats: int = 3,
    device: str = "cpu",
    *,
    inference: bool = False,
    warmup: int = 0,
    stalls: bool = False,
) -> dict:
    """Bytes and calls per collective kind, activation peak, load and step times on this rank.

    After ``warmup`` untimed steps, one step is counted (collectives, and memory with gradients
    already allocated) and the ``repeats`` after it are timed. With ``inference`` a step is one
    prediction (:func:`inference_call`, eval mode, no gradients allocated). With ``stalls``, one
    more step counts host stalls (:func:`~ocp_graphpar.measure.stalls.step_stalls`).
    """
    device = use_device(device)
    batch = batch.to(device)
    step = inference_call if inference else training_step
    with running(name):
        model = build_contender(name, family, model_config).to(device)
        model.train(not inference)
        if not inference:
            allocate_gradients(model)
        for _ in range(warmup):
            step(model, batch)
        with (
            count_wire_bytes() as wire,
            step_activation_peak(device) as peak,
            MatmulFlops() as flops,
            recording_plans() as plans,
        ):
            step(model, batch)
        partition = plans[0].stats if plans else None
        # the counted step's peak, everything held included (parameters, gradients, batch)
        allocated = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        times, cpu_times = [], []
        for _ in range(repeats):
            _barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            step(model, batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        stall_counts = step_stalls(lambda: step(model, batch), device) if stalls else None
    memory = {
        "parameters": tensor_bytes(model.parameters()),
        "gradients": tensor_bytes(p.grad for p in model.parameters()),
        "activations": peak["peak"],
    }
    if allocated is not None:
        memory["max_memory_allocated"] = allocated
    return {
        "comm": {"bytes": wire.total_bytes, "calls": wire.total_calls, "by_kind": wire.as_dict()},
        "memory": memory,
        "load": _load(partition),
        # matrix-multiply FLOPs of the step on this rank: the work, free of timing noise
        "flops": flops.total,
        "step_s": statistics.median(times) if times else None,
        "step_s_all": times,
        # CPU seconds of this process's threads: unlike wall time, not inflated by other
        # processes sharing the cores
        "cpu_s": statistics.median(cpu_times) if cpu_times else None,
        "device": str(device),
        "systems": int(batch.natoms.numel()),
        **({"stalls": stall_counts} if stalls else {}),
    }


def use_device(device: str | torch.device) -> torch.device:
    """``device`` with its index (``cuda`` is the current GPU), made this process's current
    CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def paired_step_times(
    names: list[str], family: str, model_config: dict, batch, rounds: int = 2, steps: int = 2
):
    """Step times of several contenders measured in alternating blocks (A B, B A, ...).

    Each block is a fresh process that builds one contender, takes a warm-up step and then
    ``steps`` timed steps: one model per process and a warm heap, as in training, and only
    one model in memory at a time (two XL models do not fit a small machine together).
    Alternating blocks let drift in the machine's speed fall on every contender alike.
    ``ratio`` holds, per round, the first contender's median over the second's: its spread
    shows how far the overall median is to trust.
    """
    from ocp_graphpar.parallel.workers import WorkerWorld

    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    per_round: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            with WorkerWorld(1, threads_per_rank=os.cpu_count() or 1, timeout_s=7200.0) as world:
                times = world.run(timed_steps, name, family, model_config, batch, steps)[0]
            wall[name] += [t for t, _ in times]
            cpu[name] += [c for _, c in times]
            per_round[name].append(
                (statistics.median(t for t, _ in times), statistics.median(c for _, c in times))
            )
    first, second = names[:2]
    return {
        "step_s": {name: statistics.median(times) for name, times in wall.items()},
        "cpu_s": {name: statistics.median(times) for name, times in cpu.items()},
        "step_s_all": wall,
        "cpu_s_all": cpu,
        "ratio": {
            kind: [a[i] / b[i] for a, b in zip(per_round[first], per_round[second])]
            for i, kind in enumerate(("wall", "cpu"))
        },
    }


def timed_steps(name: str, family: str, model_config: dict, batch, steps: int):
    """Build contender ``name``, take a warm-up step, then ``steps`` timed steps:
    ``[(wall_s, cpu_s), ...]``."""
    times = []
    with running(name):
        model = build_contender(name, family, model_config).train()
        for step in range(steps + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            training_step(model, batch)
            if step:
                times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return times


def _load(partition) -> dict | None:
    if partition is None:
        return None
    rank = gp_rank()
    return {
        "atoms": partition.atoms[rank],
        "edges": partition.edges[rank],
        "triplets": partition.triplets[rank],
        "halo_atoms": partition.atom_halo[rank],
        "cut_edges": partition.cut_edges,
    }


def contender_state_bytes(
    name: str, family: str, model_config: dict, ema_decay: float = 0.999
) -> dict:
    """Parameters, gradients, AdamW (AMSGrad) state and EMA after one optimizer step, measured
    with fairchem's EMA and torch's AdamW as the trainer builds them."""
    from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

    from ocp_graphpar.measure.model_state import model_state_bytes

    model = build_contender(name, family, model_config)
    allocate_gradients(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True)
    optimizer.step()
    ema = ExponentialMovingAverage(model.parameters(), ema_decay)
    ema.update()
    return asdict(model_state_bytes(model=model, optimizer=optimizer, ema=ema))
