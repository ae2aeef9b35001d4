"""``ocp-graphpar plan``: per-GPU memory against the GP size, and the GP size to ask for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ocp_graphpar.tools.plan.estimate import GIB, GraphSize, ModelState, PlanRow, plan_memory


def run_plan(args: argparse.Namespace) -> int:
    """Handler of ``plan``."""
    report = plan_memory(
        args.config,
        GraphSize.from_counts(args.atoms, args.edges, args.triplets, args.kmax),
        gpu_mem_gib=args.gpu_mem,
        reserve_gib=args.reserve,
        batch_size=args.batch_size,
        max_gp=args.max_gp,
    )
    print(json.dumps(report, indent=1) if args.json else format_plan(report, args.triplets))
    return 0


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f} GiB"


def format_plan(report: dict, triplets_given: bool = True) -> str:
    """The plan as text with a markdown table (also used in docs/benchmarks.md)."""
    state = ModelState(**report["state_bytes"])
    graph = GraphSize(**report["graph"])
    lines = [
        f"{report['model']} from {report['config']}: {report['parameters'] / 1e6:,.1f}M parameters",
        f"graph per structure: {graph.atoms:,} atoms, {graph.edges:,} edges, "
        f"{graph.triplets:,} triplets, longest triplet list {graph.kmax}"
        + ("" if triplets_given else " (triplets from the mean in-degree; pass --triplets)"),
        f"batch: {report['batch_size']} structures per GP group (optim.batch_size or --batch-size)",
        f"per GPU at every P: parameters {_gib(state.parameters)}, gradients "
        f"{_gib(state.gradients)}, optimizer state {_gib(state.optimizer)}, EMA {_gib(state.ema)}"
        f" = {_gib(state.total)}; reserve {report['reserve_gib']:.1f} GiB (CUDA context, NCCL "
        "buffers)",
        "",
        f"| GP size | activations per GPU | total per GPU | fits {report['gpu_mem_gib']:g} GiB |",
        "|---:|---:|---:|---|",
    ]
    for row in map(lambda r: PlanRow(**r), report["rows"]):
        fits = "yes" if row.fits else "no"
        lines.append(f"| {row.gp_size} | {_gib(row.activations)} | {_gib(row.total)} | {fits} |")
    lines.append("")
    max_neighbors = report["max_neighbors"]
    if max_neighbors and graph.edges > max_neighbors * graph.atoms:
        lines.append(
            f"note: {graph.edges:,} edges over {graph.atoms:,} atoms exceeds the config's "
            f"max_neighbors={max_neighbors} ({max_neighbors * graph.atoms:,} edges at most); "
            "the model would build the smaller graph."
        )
    lines.append(_advice(report, state))
    return "\n".join(lines)


def _advice(report: dict, state: ModelState) -> str:
    gp = report["recommended_gp"]
    if gp is not None:
        return (
            f"recommended: --gp-gpus {gp} (the smallest GP size that fits), e.g. "
            f"fairchem --mode train --config-yml {report['config']} --num-gpus {max(gp, 8)} "
            f"--gp-gpus {gp}"
        )
    if state.total + report["reserve_gib"] * GIB > report["gpu_mem_gib"] * GIB:
        return (
            "does not fit at any GP size: the model state alone exceeds the GPU, and graph "
            "parallelism replicates it. Use GPUs with more memory or a narrower model."
        )
    return (
        f"does not fit up to --max-gp {report['rows'][-1]['gp_size']}: raise --max-gp, lower "
        "--batch-size, or set model.activation_checkpointing: True in the config (then re-plan)."
    )


def add_plan_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="per-GPU memory against the GP size; recommend --gp-gpus",
        description=__doc__,
    )
    parser.add_argument("--config", type=Path, required=True, help="a model config YAML")
    parser.add_argument("--atoms", type=int, required=True, help="atoms per structure")
    parser.add_argument("--edges", type=int, required=True, help="edges per structure")
    parser.add_argument("--triplets", type=int, help="triplets per structure (default: estimated)")
    parser.add_argument("--kmax", type=int, help="longest triplet list of an edge (GemNet)")
    parser.add_argument("--gpu-mem", type=float, default=32.0, help="GiB per GPU (default 32)")
    parser.add_argument("--reserve", type=float, default=2.0, help="GiB kept free (default 2)")
    parser.add_argument("--batch-size", type=int, help="structures per GP group (default: config)")
    parser.add_argument("--max-gp", type=int, default=1024, help="largest GP size to consider")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run_plan)
