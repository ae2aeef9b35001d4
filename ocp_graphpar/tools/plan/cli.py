"""``ocp-graphpar plan``: per-GPU memory against the GP size, and the GP size to ask for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.plan.estimate import (
    GIB,
    GraphSize,
    ModelState,
    PlanRow,
    model_state,
    plan_rows,
)
from ocp_graphpar.tools.plan.trace import WIDTHS, family_of, trace_model


def run_plan(args: argparse.Namespace) -> int:
    """Handler of ``plan``."""
    config = _load(args.config)
    model_config = dict(config["model"])
    family = family_of(str(model_config.pop("name", "")))
    trace = trace_model(family, model_config)
    widths = {name: model_config[name] for name in WIDTHS[family] if name in model_config}
    num_parameters = round(trace.parameters.evaluate(widths))
    state = model_state(num_parameters, config.get("optim", {}))
    graph = GraphSize.from_counts(args.atoms, args.edges, args.triplets, args.kmax)
    batch = args.batch_size or int(config.get("optim", {}).get("batch_size", 1))
    rows = plan_rows(
        trace, widths, state, graph, batch, args.gpu_mem * GIB, args.reserve * GIB, args.max_gp
    )
    report = {
        "config": str(args.config),
        "model": config["model"]["name"],
        "parameters": num_parameters,
        "graph": vars(graph),
        "batch_size": batch,
        "max_neighbors": model_config.get("max_neighbors"),
        "gpu_mem_gib": args.gpu_mem,
        "reserve_gib": args.reserve,
        "state_bytes": vars(state),
        "rows": [vars(row) for row in rows],
        "recommended_gp": next((row.gp_size for row in rows if row.fits), None),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(_text(report, state, rows, graph, args))
    return 0


def _load(path: Path) -> dict:
    from fairchem.core.common.utils import load_config

    if not path.is_file():
        raise UserFacingError(f"config {path} does not exist; pass --config configs/s2ef/*.yml")
    config = load_config(str(path))[0]
    if "model" not in config or "name" not in config["model"]:
        raise UserFacingError(f"{path} has no model section with a name")
    return config


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f} GiB"


def _text(report: dict, state: ModelState, rows: list[PlanRow], graph: GraphSize, args) -> str:
    lines = [
        f"{report['model']} from {report['config']}: {report['parameters'] / 1e6:,.1f}M parameters",
        f"graph per structure: {graph.atoms:,} atoms, {graph.edges:,} edges, "
        f"{graph.triplets:,} triplets, longest triplet list {graph.kmax}"
        + ("" if args.triplets else " (triplets from the mean in-degree; pass --triplets)"),
        f"batch: {report['batch_size']} structures per GP group (optim.batch_size or --batch-size)",
        f"per GPU at every P: parameters {_gib(state.parameters)}, gradients "
        f"{_gib(state.gradients)}, optimizer state {_gib(state.optimizer)}, EMA {_gib(state.ema)}"
        f" = {_gib(state.total)}; reserve {args.reserve:.1f} GiB (CUDA context, NCCL buffers)",
        "",
        f"| GP size | activations per GPU | total per GPU | fits {args.gpu_mem:g} GiB |",
        "|---:|---:|---:|---|",
    ]
    lines += [
        f"| {row.gp_size} | {_gib(row.activations)} | {_gib(row.total)} | "
        f"{'yes' if row.fits else 'no'} |"
        for row in rows
    ]
    lines.append("")
    max_neighbors = report["max_neighbors"]
    if max_neighbors and graph.edges > max_neighbors * graph.atoms:
        lines.append(
            f"note: {graph.edges:,} edges over {graph.atoms:,} atoms exceeds the config's "
            f"max_neighbors={max_neighbors} ({max_neighbors * graph.atoms:,} edges at most); "
            "the model would build the smaller graph."
        )
    lines.append(_advice(report, state, args))
    return "\n".join(lines)


def _advice(report: dict, state: ModelState, args) -> str:
    gp = report["recommended_gp"]
    if gp is not None:
        return (
            f"recommended: --gp-gpus {gp} (the smallest GP size that fits), e.g. "
            f"fairchem --mode train --config-yml {report['config']} --num-gpus {max(gp, 8)} "
            f"--gp-gpus {gp}"
        )
    if state.total + args.reserve * GIB > args.gpu_mem * GIB:
        return (
            "does not fit at any GP size: the model state alone exceeds the GPU, and graph "
            "parallelism replicates it. Use GPUs with more memory or a narrower model."
        )
    return (
        f"does not fit up to --max-gp {args.max_gp}: raise --max-gp, lower --batch-size, or set "
        "model.activation_checkpointing: True in the config (then re-plan)."
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
