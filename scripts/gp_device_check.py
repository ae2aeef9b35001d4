"""Graph parallelism on one device: P gloo ranks sharing it, one float64 training step against
the single-process step of the same weights.

    python scripts/gp_device_check.py [--suite gpu.yml] [--device cuda] [--size 2] [--tiny]
                                      [--out DIR]

Every rank runs on the same device (``cuda``: the current GPU), so the runtime's collectives
move tensors of that device through gloo. Compared is what the trainer and the optimizer see:
the energies and forces GP rank 0 returns, and each parameter's gradient as DDP averages it
over the GP ranks, against the single-process model's. The workloads are those of the suite
(``configs/bench/gpu.yml``; ``--tiny``: at their tiny widths), on their first two systems.
Writes ``gp_device_check.json`` and ``.md`` into ``--out``; exit status 1 if an error exceeds
the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ocp_graphpar.measure.contenders import build_contender
from ocp_graphpar.measure.steps import training_step, use_device
from ocp_graphpar.measure.wire import count_wire_bytes
from ocp_graphpar.parallel import gp_group, gp_rank, gp_size, recording_plans
from ocp_graphpar.parallel.groups import setup_groups, teardown_groups

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-9  # largest relative error of energies, forces and gradients


def nontrivial_model(family: str, model_config: dict, device: torch.device) -> torch.nn.Module:
    """Our model in float64 with the benchmark's weights, except that parameters initialised
    to zero (upstream DimeNet++'s output layers) are drawn from N(0, 1 / fan_in), so every
    output and gradient is non-trivial."""
    model = build_contender("ours", family, model_config, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and param.numel() and not param.any():
                fan_in = param.shape[-1] if param.dim() else 1
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype))
                param.mul_(fan_in**-0.5)
    return model.to(device).train()


def step(family: str, model_config: dict, batch, device: torch.device) -> dict:
    model = nontrivial_model(family, model_config, device)
    out = training_step(model, batch)
    grads = {
        name: (param.grad if param.grad is not None else torch.zeros_like(param)).detach()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    return {"energy": out["energy"], "forces": out["forces"], "grads": grads}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``expected``."""
    scale = expected.abs().max().clamp(min=torch.finfo(expected.dtype).tiny)
    return float((actual - expected).abs().max() / scale) if expected.numel() else 0.0


def errors(ours: dict, reference: dict) -> dict:
    """The largest relative errors of energies, forces and (worst parameter) gradients."""
    grads = {n: relative_error(ours["grads"][n], g) for n, g in reference["grads"].items()}
    worst = max(grads, key=grads.get)
    return {
        "energy": relative_error(ours["energy"], reference["energy"]),
        "forces": relative_error(ours["forces"], reference["forces"]),
        "gradients": grads[worst],
        "worst_parameter": worst,
        "parameters": len(grads),
    }


def gp_equality(family: str, model_config: dict, batch, *, device: str) -> dict:
    """On every GP rank: one float64 step; on rank 0 also the single-process step and the
    errors. The collectives issued are counted by ``torch.distributed`` function."""
    device = use_device(device)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        batch = batch.clone()
        batch.pos = batch.pos.to(torch.float64)  # cells stay float32, as fairchem stores them
        batch = batch.to(device)
        with count_wire_bytes() as wire, recording_plans() as plans:
            ours = step(family, model_config, batch, device)
        for grad in ours["grads"].values():  # DDP's average over the GP ranks
            dist.all_reduce(grad, group=gp_group())
            grad /= gp_size()
        rank, size, backend = gp_rank(), gp_size(), dist.get_backend()
        result = {"atoms": plans[0].stats.atoms[rank], "collectives": dict(wire.calls)}
        teardown_groups()  # the single-process step runs without graph parallelism
        try:
            if rank == 0:
                result["errors"] = errors(ours, step(family, model_config, batch, device))
        finally:  # every rank rebuilds the groups, so a failure on rank 0 leaves none waiting
            setup_groups(size, backend=backend)
    finally:
        torch.set_default_dtype(previous)
    return result


def check(suite_path: Path, *, device: str, size: int, tiny: bool) -> list[dict]:
    """The check of every workload of the GPU suite: one record each."""
    from gp_device_check import gp_equality  # by module name, so spawned ranks can import it

    from ocp_graphpar.parallel.workers import WorkerWorld
    from ocp_graphpar.tools.bench.runner import workload_batch
    from ocp_graphpar.tools.bench.suite import load_suite

    suite = load_suite(suite_path)
    suite = suite.at_tiny_widths() if tiny else suite
    records = []
    with WorkerWorld(size, threads_per_rank=1, timeout_s=1800.0) as world:
        for workload in suite.workloads:
            workload.systems = workload.systems[:2]
            config = workload.model_config()
            batch = workload_batch(workload, config)
            per_rank = world.run(gp_equality, workload.family, config, batch, device=device)
            errors = per_rank[0]["errors"]
            worst = max(errors["energy"], errors["forces"], errors["gradients"])
            record = {"workload": workload.name, "size": size, "device": device}
            records.append({**record, "passed": worst <= TOLERANCE, "per_rank": per_rank})
    return records


def markdown(records: list[dict]) -> str:
    lines = [
        "# Graph parallelism on one device",
        "",
        "P gloo ranks share the device, so every collective moves its tensors. One training "
        "step in float64; errors are the largest absolute difference over the largest "
        "magnitude of the single-process value (gradients: the worst parameter).",
        "",
        "| Workload | Device | P | Atoms per rank | Energies | Forces | Gradients | Collectives "
        "| Result |",
        "|---|---|---:|---|---:|---:|---|---|---|",
    ]
    for record in records:
        first = record["per_rank"][0]
        errors = first["errors"]
        atoms = " / ".join(str(rank["atoms"]) for rank in record["per_rank"])
        issued = ", ".join(f"`{name}` x{n}" for name, n in first["collectives"].items())
        verdict = "pass" if record["passed"] else "**FAIL**"
        lines.append(
            f"| {record['workload']} | `{record['device']}` | {record['size']} | {atoms} "
            f"| {errors['energy']:.1e} | {errors['forces']:.1e} | {errors['gradients']:.1e} "
            f"(`{errors['worst_parameter']}`) | {issued} | {verdict} (tolerance {TOLERANCE:.0e}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=REPO / "configs" / "bench" / "gpu.yml")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the suite's tiny widths")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"torch {torch.__version__} sees no CUDA device; pass --device cpu")
    records = check(args.suite, device=args.device, size=args.size, tiny=args.tiny)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gp_device_check.json").write_text(json.dumps(records, indent=1))
    (args.out / "gp_device_check.md").write_text(markdown(records))
    print(markdown(records))
    return 0 if all(record["passed"] for record in records) else 1


if __name__ == "__main__":
    sys.exit(main())
