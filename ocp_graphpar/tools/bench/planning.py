"""The memory planner in the bench: its estimates beside the measured peaks, and its plans.

``plan_check`` and ``plan`` make records (jobs of :mod:`.suite`); ``plan_check_table`` and
``plans_section`` render them (:mod:`.report`).
"""

from __future__ import annotations

from ocp_graphpar.measure.contenders import CONTENDERS, OURS, build_contender

MIB = 2**20
WHO = {"ours": "ours", "ours_ck": "ours with activation checkpointing"}


def plan_check(workload, config: dict, batch, *, sizes: list[int]) -> dict:
    """The planner's activation estimate for this workload's batch at every size, to set
    beside the measured peaks: for ours as configured and, when the workload runs it, for
    ``ours_ck`` (the planner's checkpointed trace, issue #19). An inference workload gets the
    prediction's estimates, and also those at its config's own widths (``config_widths``)."""
    from dataclasses import replace

    from ocp_graphpar.measure.planner.estimate import GraphSize, activation_bytes
    from ocp_graphpar.measure.planner.trace import WIDTHS, model_graph_size, trace_model

    family, inference = workload.family, workload.inference
    counts = model_graph_size(family, build_contender("ours", family, config), batch)
    graph = GraphSize(counts["atoms"], counts["edges"], counts["triplets"], counts.get("kmax", 1))

    def estimates(model_config: dict) -> tuple[dict[str, float], dict, int]:
        widths = {name: model_config[name] for name in WIDTHS[family] if name in model_config}
        trace = trace_model(family, model_config, inference=inference)
        per_size = {str(p): activation_bytes(trace, widths, graph, batch=1, gp=p) for p in sizes}
        return per_size, widths, round(trace.parameters.evaluate(widths))

    record = {"kind": "plan_check", "workload": workload.name}
    for key, contender in (("estimates", "ours"), ("estimates_ck", "ours_ck")):
        if contender == "ours" or contender in workload.contenders:
            record[key] = estimates({**config, **OURS[contender]})[0]
    if inference:
        # the same graph: overrides that change the graph (cutoff, neighbours) are not undone
        full = {**replace(workload, overrides={}).model_config(), **_graph_keys(config)}
        per_size, widths, parameters = estimates(full)
        record["config_widths"] = {
            "estimates": per_size,
            "widths": widths,
            "parameters": parameters,
        }
    return record


def _graph_keys(config: dict) -> dict:
    return {key: config[key] for key in ("cutoff", "max_neighbors", "otf_graph") if key in config}


def plan(spec: dict) -> dict:
    """A suite's ``plans:`` entry planned (``ocp-graphpar plan`` as a record)."""
    from ocp_graphpar.measure.planner.estimate import GraphSize, plan_memory

    spec = dict(spec)
    graph = GraphSize.from_counts(spec.pop("atoms"), spec.pop("edges"))
    return {"kind": "plan", "workload": "", **plan_memory(spec.pop("config"), graph, **spec)}


def plan_check_table(runs: dict, estimates: dict, *, contender: str = "ours") -> list[str]:
    lines = [
        "`ocp-graphpar plan`'s activation estimate against the measured peak "
        f"({WHO.get(contender, CONTENDERS[contender].label)}, per rank):",
        "",
        "| P | Measured | Planner | Planner error |",
        "|---:|---:|---:|---:|",
    ]
    for (name, size), run in sorted(runs.items(), key=lambda kv: kv[0][1]):
        if name != contender or str(size) not in estimates:
            continue
        measured = max(rank["memory"]["activations"] for rank in run["per_rank"])
        estimate = estimates[str(size)]
        lines.append(
            f"| {size} | {measured / MIB:,.1f} MiB | {estimate / MIB:,.1f} MiB "
            f"| {100 * (estimate / measured - 1):+.1f}% |"
        )
    return [*lines, ""]


def plans_section(plans: list[dict]) -> list[str]:
    """``## Memory plans``: each plan as ``ocp-graphpar plan`` prints it."""
    from ocp_graphpar.measure.planner.text import format_plan

    lines = [
        "## Memory plans",
        "",
        "`ocp-graphpar plan` for the paper's configurations (model state is measured-exact "
        "arithmetic; activations are the traced formulas validated above):",
        "",
    ]
    for plan in plans:
        graph = plan["graph"]
        if "recommended" not in plan:  # written before the planner compared settings
            lines += [
                f"(a plan of {plan['config']} by an older planner: re-run "
                "`ocp-graphpar bench --only plans`)",
                "",
            ]
            continue
        lines += [
            f"`ocp-graphpar plan --config {plan['config']} --atoms {graph['atoms']} "
            f"--edges {graph['edges']} --gpu-mem {plan['gpu_mem_gib']:g}`",
            "",
            *format_plan(plan, triplets_given=False).splitlines(),
            "",
        ]
    return lines
