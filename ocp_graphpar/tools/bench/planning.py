"""The memory planner in the bench: its estimates for a workload's batch, and its plans."""

from __future__ import annotations

from dataclasses import replace

from ocp_graphpar.measure.contenders import OURS, build_contender
from ocp_graphpar.measure.planner.estimate import GraphSize, activation_bytes, plan_memory
from ocp_graphpar.measure.planner.trace import WIDTHS, model_graph_size, trace_model
from ocp_graphpar.tools.bench.records import Plan, PlanCheck


def plan_check(workload, config: dict, batch, *, sizes: list[int]) -> PlanCheck:
    """The planner's activation estimate for this workload's batch at every size, to set
    beside the measured peaks: for ours as configured and, when the workload runs it, for
    ``ours_ck`` (the planner's checkpointed trace). An inference workload gets the
    prediction's estimates, and also those at its config's own widths (``config_widths``)."""
    family, inference = workload.family, workload.inference
    counts = model_graph_size(family, build_contender("ours", family, config), batch)
    graph = GraphSize(counts["atoms"], counts["edges"], counts["triplets"], counts.get("kmax", 1))

    def estimates(model_config: dict) -> tuple[dict[str, float], dict, int]:
        widths = {name: model_config[name] for name in WIDTHS[family] if name in model_config}
        trace = trace_model(family, model_config, inference=inference)
        per_size = {str(p): activation_bytes(trace, widths, graph, batch=1, gp=p) for p in sizes}
        return per_size, widths, round(trace.parameters.evaluate(widths))

    check = PlanCheck(workload.name, estimates({**config, **OURS["ours"]})[0])
    if "ours_ck" in workload.contenders:
        check.estimates_ck = estimates({**config, **OURS["ours_ck"]})[0]
    if inference:
        # the same graph: overrides that change the graph (cutoff, neighbours) are not undone
        graph_keys = {k: config[k] for k in ("cutoff", "max_neighbors", "otf_graph") if k in config}
        full = {**replace(workload, overrides={}).model_config(), **graph_keys}
        per_size, widths, parameters = estimates(full)
        check.config_widths = {"estimates": per_size, "widths": widths, "parameters": parameters}
    return check


def plan(spec: dict) -> Plan:
    """A suite's ``plans:`` entry planned (``ocp-graphpar plan`` as a record)."""
    spec = dict(spec)
    at_most = spec.pop("at_most", {})
    graph = GraphSize.from_counts(spec.pop("atoms"), spec.pop("edges"))
    return Plan(plan_memory(spec.pop("config"), graph, **spec), at_most)
