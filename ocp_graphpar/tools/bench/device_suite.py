"""Run a device suite (a suite file with ``device:``, e.g. ``configs/bench/gpu.yml``).

Two parts, each in spawned processes so that every measurement starts from a fresh allocator:

1. every (workload, contender) at P = 1 on the device, in a process of its own
   (:func:`~ocp_graphpar.tools.bench.device.measure_on_device`): step time, structures per
   second, peak memory, stalls;
2. ``gp_check``: P gloo ranks sharing the one device, float64, against the single-process step
   (:func:`~ocp_graphpar.tools.bench.gp_check.gp_equality`), staging through host memory only
   the collectives gloo refuses on the device's tensors (plus any ``force_staging`` names).
"""

from __future__ import annotations

import logging
import os
import platform
import time

import torch

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.parallel.workers import RankDied, WorkerWorld
from ocp_graphpar.tools.bench.device import measure_on_device
from ocp_graphpar.tools.bench.gp_check import gp_equality
from ocp_graphpar.tools.bench.staging import COLLECTIVES
from ocp_graphpar.tools.bench.suite import Suite, load_batch, workload_record

log = logging.getLogger(__name__)

DEFAULT_TIMING = {"warmup": 3, "steps": 10}
DEFAULT_TOLERANCE = 1e-9
WORLD_TIMEOUT_S = 1800.0


def check_device(device: str) -> torch.device:
    """``device`` parsed, or the reason it cannot run here."""
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise UserFacingError(f"--device {device!r}: {error}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserFacingError(
            f"the suite runs on {device!r} but torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda = {torch.version.cuda}); install a CUDA build "
            "(`make setup CUDA=cu128`) or pass --device cpu"
        )
    return parsed


def device_environment(device: torch.device, command: str) -> dict:
    """What the report's header names: the device, torch and CUDA versions, the command."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        total = torch.cuda.get_device_properties(index).total_memory
        described = f"{name} ({total / 2**30:.0f} GiB)"
    else:
        described = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {
        "command": command,
        "device": str(device),
        "device_name": described,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def run_device_suite(
    suite: Suite, *, device: str, force_staging: tuple[str, ...] = ()
) -> list[dict]:
    """Every record of a device suite: one per workload, (workload, contender) and gp check."""
    timing = {**DEFAULT_TIMING, **suite.timing}
    unknown = set(force_staging) - set(COLLECTIVES)
    if unknown:
        raise UserFacingError(f"--stage {sorted(unknown)}: choose from {', '.join(COLLECTIVES)}")
    started = time.perf_counter()
    records, batches = [], {}
    for workload in suite.workloads:
        config = workload.model_config()
        batch = _batch(workload.systems, config)
        batches[workload.name] = (workload, config, batch)
        records.append(workload_record(workload, batch))
        for contender in workload.contenders:
            log.info(
                "%s %s on %s: %d warm-up + %d timed steps (elapsed %.0f s)",
                workload.name,
                contender,
                device,
                timing["warmup"],
                timing["steps"],
                time.perf_counter() - started,
            )
            key = {"workload": workload.name, "contender": contender}
            result = run_in_world(
                1,
                key,
                measure_on_device,
                contender,
                workload.family,
                config,
                batch,
                device=device,
                **timing,
            )
            records.append({"kind": "device_run", **key, **result[0]} if result else key)
            if not result:
                continue
            result = result[0]
            log.info(
                "  step %.1f ms, %.2f structures/s, peak %.0f MiB, %s stalls/step",
                1e3 * result["timing"]["step_s"],
                result["structures_per_s"],
                result["memory"]["peak_bytes"] / 2**20,
                result["stalls"]["stalls"],
            )
    records += _gp_checks(suite, batches, device, force_staging, started)
    log.info("device suite done in %.0f s", time.perf_counter() - started)
    return records


def _gp_checks(suite: Suite, batches: dict, device: str, force_staging, started: float) -> list:
    spec = suite.gp_check or {}
    names = [name for name in spec.get("workloads", []) if name in batches]
    if not names:
        return []
    size = int(spec.get("size", 2))
    tolerance = float(spec.get("tolerance", DEFAULT_TOLERANCE))
    records = []
    for name in names:
        workload, config, batch = batches[name]
        systems = min(int(spec.get("systems", len(workload.systems))), len(workload.systems))
        if systems < len(workload.systems):
            batch = _batch(workload.systems[:systems], config)
        log.info(
            "gp check %s: P = %d on %s, float64, %d systems (elapsed %.0f s)",
            name,
            size,
            device,
            systems,
            time.perf_counter() - started,
        )
        key = {"workload": name, "check": f"P = {size}"}
        per_rank = run_in_world(
            size,
            key,
            gp_equality,
            workload.family,
            config,
            batch,
            device=device,
            force_staging=tuple(force_staging),
        )
        if not per_rank:
            records.append(key)
            continue
        errors = per_rank[0]["errors"]
        passed = max(errors["energy"], errors["forces"], errors["gradients"]) <= tolerance
        records.append(
            {
                "kind": "gp_check",
                "workload": name,
                "size": size,
                "systems": systems,
                "tolerance": tolerance,
                "passed": passed,
                "per_rank": per_rank,
            }
        )
        log.info(
            "  energies %.1e, forces %.1e, gradients %.1e: %s",
            errors["energy"],
            errors["forces"],
            errors["gradients"],
            "pass" if passed else "FAIL",
        )
    return records


def run_in_world(size: int, key: dict, fn, *args, **kwargs) -> list | None:
    """``fn(*args, **kwargs)`` on every rank of a fresh world of ``size`` ranks: the per-rank
    results, or ``None`` with ``key`` made a ``failed`` record (the suite goes on)."""
    threads = max(1, (os.cpu_count() or 1) // size)
    try:
        with WorkerWorld(size, threads_per_rank=threads, timeout_s=WORLD_TIMEOUT_S) as world:
            return world.run(fn, *args, **kwargs)
    except (RankDied, RuntimeError, TimeoutError) as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        key.update(
            kind="failed", reason=lines[-1] if lines else type(error).__name__, detail=lines[-30:]
        )
        log.warning("%s did not finish: %s", key, key["reason"])
        return None


def _batch(systems: list[str], config: dict):
    """The structures collated with their graph at the model's cutoff and neighbour limit."""
    return load_batch(systems, float(config["cutoff"]), int(config.get("max_neighbors", 50)))
