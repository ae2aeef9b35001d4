"""A plan as ``ocp-graphpar plan`` prints it (and docs/benchmarks.md shows it): what was
assumed, a markdown table of the rows, and the advice the rows support."""

from __future__ import annotations

from ocp_graphpar.measure.model_state import ModelStateBytes
from ocp_graphpar.measure.planner.estimate import GIB, GraphSize, PlanRow
from ocp_graphpar.measure.planner.inference import CHECKPOINTING_KEY, InferenceRow


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f} GiB"


def format_plan(report: dict, triplets_given: bool = True) -> str:
    """The plan as text with a markdown table (also used in docs/benchmarks.md)."""
    state = ModelStateBytes(**report["state_bytes"])
    graph = GraphSize(**report["graph"])
    world = report.get("world")
    lines = [
        f"{report['model']} from {report['config']}: {report['parameters'] / 1e6:,.1f}M parameters",
        f"graph per structure: {graph.atoms:,} atoms, {graph.edges:,} edges, "
        f"{graph.triplets:,} triplets, longest triplet list {graph.kmax}"
        + ("" if triplets_given else " (triplets from the mean in-degree; pass --triplets)"),
        f"batch: {report['batch_size']} structures per GP group (optim.batch_size or --batch-size)",
        f"model state per GPU: parameters {_gib(state.parameters)}, gradients "
        f"{_gib(state.gradients)}, optimizer state {_gib(state.optimizer)}, EMA {_gib(state.ema)}"
        f" = {_gib(state.total)} replicated; sharded state splits the optimizer state and EMA "
        + (
            f"over {world} ranks (--world)"
            if world
            else "over the GP group's P ranks " "(one GP group; --world N for a run of N GPUs)"
        )
        + f"; reserve {report['reserve_gib']:.1f} GiB (CUDA context, NCCL buffers)",
        "",
        "| GP size | setting | state per GPU | activations per GPU | total per GPU "
        f"| fits {report['gpu_mem_gib']:g} GiB |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in map(lambda r: PlanRow(**r), report["rows"]):
        fits = "yes" if row.fits else "no"
        lines.append(
            f"| {row.gp_size} | {row.setting} | {_gib(row.state)} "
            f"| {_gib(row.activations)} | {_gib(row.total)} | {fits} |"
        )
    lines.append("")
    max_neighbors = report["max_neighbors"]
    if max_neighbors and graph.edges > max_neighbors * graph.atoms:
        lines.append(
            f"note: {graph.edges:,} edges over {graph.atoms:,} atoms exceeds the config's "
            f"max_neighbors={max_neighbors} ({max_neighbors * graph.atoms:,} edges at most); "
            "the model would build the smaller graph."
        )
    lines.append(_training_advice(report, state))
    return "\n".join(lines)


def _training_advice(report: dict, state: ModelStateBytes) -> str:
    best = report["recommended"]
    if best is not None:
        gp, keys = best["gp_size"], best["config_keys"]
        chosen = [key for key, value in keys.items() if value]
        spelled = " and ".join(f"{key}: {_yaml(key, keys[key])}" for key in chosen or keys)
        overrides = "".join(f" --{key}=True" for key in chosen)
        num_gpus = max(report.get("world") or 8, gp)
        return (
            f"recommended: --gp-gpus {gp} with {best['setting']}: "
            + (f"set {spelled} in the config" if chosen else f"keep {spelled}")
            + " (the smallest GP size that fits, and at it the setting that costs least step "
            f"time), e.g. fairchem --mode train --config-yml {report['config']} "
            f"--num-gpus {num_gpus} --gp-gpus {gp}{overrides}"
        )
    smallest = ModelStateBytes(**{**vars(state), "optimizer": 0, "ema": 0})
    if smallest.total + report["reserve_gib"] * GIB > report["gpu_mem_gib"] * GIB:
        return (
            "does not fit at any GP size: parameters and gradients alone exceed the GPU, and "
            "graph parallelism replicates them (sharding splits only the optimizer state and "
            "EMA). Use GPUs with more memory or a narrower model."
        )
    return (
        f"does not fit up to --max-gp {report['rows'][-1]['gp_size']}, even with activation "
        "checkpointing and sharded state: raise --max-gp or --world, or lower --batch-size."
    )


def _yaml(key: str, value: bool) -> str:
    """A key's value as the shipped configs spell it (model options Python-style)."""
    return str(value) if key.startswith("model.") else str(value).lower()


def format_inference_plan(report: dict, triplets_given: bool = True) -> str:
    """The inference plan as text with a markdown table (also used in docs/benchmarks.md)."""
    graph = GraphSize(**report["graph"])
    configured = report["activation_checkpointing"]
    forces = {
        "direct": "forces from the model's force head",
        "-dE/dpos": "forces -dE/dpos (the model records a graph for that pass only)",
        "none": "no forces",
    }[report["forces"]]
    if report["checkpointing_matters"]:
        checkpointing = "the other setting is shown beside it"
    else:
        checkpointing = "turning it " + ("off" if configured else "on") + " changes nothing here"
    lines = [
        f"{report['model']} from {report['config']}: {report['parameters'] / 1e6:,.1f}M "
        "parameters",
        f"graph per structure: {graph.atoms:,} atoms, {graph.edges:,} edges, "
        f"{graph.triplets:,} triplets, longest triplet list {graph.kmax}"
        + ("" if triplets_given else " (triplets from the mean in-degree; pass --triplets)"),
        f"inference: {report['batch_size']} structure{'s' if report['batch_size'] > 1 else ''} per "
        "call (--batch-size), energy and "
        f"{forces}, under torch.no_grad() in eval mode; per GPU: parameters "
        f"{_gib(report['parameter_bytes'])}, replicated (no gradients, optimizer state or EMA); "
        f"reserve {report['reserve_gib']:.1f} GiB (CUDA context, NCCL buffers)",
        f"activation checkpointing: {'on' if configured else 'off'} in the config "
        f"({CHECKPOINTING_KEY}); {checkpointing}",
        "",
        "| GP size | setting | parameters per GPU | activations per GPU | total per GPU "
        f"| fits {report['gpu_mem_gib']:g} GiB |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in map(lambda r: InferenceRow(**r), report["rows"]):
        setting = "checkpointing" if row.activation_checkpointing else "plain"
        if row.activation_checkpointing == configured:
            setting += " (config)"
        lines.append(
            f"| {row.gp_size} | {setting} | {_gib(row.parameters)} "
            f"| {_gib(row.activations)} | {_gib(row.total)} "
            f"| {'yes' if row.fits else 'no'} |"
        )
    lines += ["", _inference_advice(report)]
    return "\n".join(lines)


def _inference_advice(report: dict) -> str:
    gp, other = report["recommended_gp"], report["recommended_gp_other"]
    configured = report["activation_checkpointing"]
    if gp is None:
        largest = report["rows"][-1]["gp_size"]
        if report["parameter_bytes"] + report["reserve_gib"] * GIB > report["gpu_mem_gib"] * GIB:
            return (
                "does not fit at any GP size: the parameters alone exceed the GPU, and "
                "graph parallelism replicates them."
            )
        advice = f"does not fit up to --max-gp {largest} as configured"
    else:
        advice = f"smallest GP size that fits: {_gpus(gp)} per structure, as configured"
    if other is not None and (gp is None or other < gp):
        advice += f"; with {CHECKPOINTING_KEY}: {not configured} it fits on {_gpus(other)}"
    return advice + "."


def _gpus(count: int) -> str:
    return f"{count} GPU" + ("s" if count > 1 else "")
