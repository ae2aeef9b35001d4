"""``ocp-graphpar plan``: per-GPU memory against the GP size and the memory settings
(activation checkpointing, sharded optimizer state), and the cheapest that fits; with
``--inference``, the memory of one prediction (parameters and activations) instead."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.measure.planner.estimate import GraphSize, plan_memory
from ocp_graphpar.measure.planner.inference import plan_inference
from ocp_graphpar.measure.planner.text import format_inference_plan, format_plan


def run_plan(args: argparse.Namespace) -> int:
    """Handler of ``plan``."""
    graph = GraphSize.from_counts(args.atoms, args.edges, args.triplets, args.kmax)
    if args.inference:
        if args.world is not None:
            raise UserFacingError("--world applies to training plans (sharded optimizer state)")
        report = plan_inference(
            args.config,
            graph,
            gpu_mem_gib=args.gpu_mem,
            reserve_gib=args.reserve,
            batch_size=args.batch_size,
            max_gp=args.max_gp,
        )
        text = format_inference_plan(report, args.triplets is not None)
        print(json.dumps(report, indent=1) if args.json else text)
        return 0
    report = plan_memory(
        args.config,
        graph,
        gpu_mem_gib=args.gpu_mem,
        reserve_gib=args.reserve,
        batch_size=args.batch_size,
        max_gp=args.max_gp,
        world=args.world,
    )
    print(json.dumps(report, indent=1) if args.json else format_plan(report, args.triplets))
    return 0


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
    parser.add_argument(
        "--batch-size",
        type=int,
        help="structures per GP group (default: the config's; with --inference, 1)",
    )
    parser.add_argument("--max-gp", type=int, default=1024, help="largest GP size to consider")
    parser.add_argument(
        "--world",
        type=int,
        help="GPUs of the whole run (data x graph parallel) that sharded optimizer state "
        "spreads over (default: the GP size, i.e. one GP group)",
    )
    parser.add_argument(
        "--inference",
        action="store_true",
        help="plan a prediction (energy and forces under torch.no_grad(), as fairchem's predict "
        "mode and ASE calculators run the model): parameters and activations only",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run_plan)
