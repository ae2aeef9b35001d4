"""The models a benchmark compares, built on the same weights.

``ours`` is one of our graph-parallel models (see :mod:`ocp_graphpar.models.catalog`); the others
are upstream fairchem 1.10 models with the same parameter names and shapes, loaded from ours'
state dict:

- ``gp_gemnet_t``: upstream's graph-parallel GemNet-T. Its forward reads ``graph.distance_vec``,
  which fairchem's ``GraphData`` does not have; :func:`upstream_gp_alias` adds that one name
  while the benchmark runs it, and nowhere else.
- ``gemnet_t``, ``dimenetplusplus`` and ``painn``: upstream's single-process models (P = 1 only),
  one per row of the catalog, named as fairchem's registry names them.
- ``ours_all_gather``: DimeNet++-XL gathering every edge's features each block (the simple
  design, :mod:`ocp_graphpar.measure.variants`), to show what the halo of down-projected
  features saves.
- ``ours_ck``: ours with ``activation_checkpointing: True`` whatever the config says, beside
  ``ours`` as the config has it (the memory workloads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ocp_graphpar.models.catalog import GRAPH_PARALLEL_OPTIONS, MODELS, ModelSpec, model_spec


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    graph_parallel: bool


def _upstream(name: str, graph_parallel: bool) -> Contender:
    return Contender(name, f"upstream {name}", graph_parallel)


CONTENDERS = {
    "ours": Contender("ours", "ocp-graphpar", True),
    # by hand, not from the catalog: only upstream_gp_alias lets it run
    "gp_gemnet_t": _upstream("gp_gemnet_t", True),
    **{
        spec.upstream_registry_name: _upstream(spec.upstream_registry_name, False)
        for spec in MODELS.values()
    },
    "ours_all_gather": Contender("ours_all_gather", "ocp-graphpar, all-gather exchange", True),
    "ours_ck": Contender("ours_ck", "ocp-graphpar, activation checkpointing", True),
}

#: Our contenders: the graph-parallel model, built from the same config with these settings.
OURS = {"ours": {}, "ours_all_gather": {}, "ours_ck": {"activation_checkpointing": True}}


@contextlib.contextmanager
def upstream_gp_alias() -> Iterator[None]:
    """Let upstream ``gp_gemnet_t`` run: ``GraphData.distance_vec`` -> ``edge_distance_vec``."""
    from fairchem.core.models.base import GraphData

    GraphData.distance_vec = property(lambda graph: graph.edge_distance_vec)
    try:
        yield
    finally:
        del GraphData.distance_vec


def upstream_options(model_config: dict) -> dict:
    """``model_config`` without the options only our models take."""
    return {k: v for k, v in model_config.items() if k not in GRAPH_PARALLEL_OPTIONS}


def build_contender(
    name: str, family: str, model_config: dict, seed: int = 0, dtype=torch.float32
) -> torch.nn.Module:
    """Contender ``name`` for the model ``family`` (a row of the model catalog), weights drawn
    from ``seed``.

    Every contender gets the weights ours would get from the same seed, so results differ only
    in how the model runs, never in what it computes.
    """
    spec = model_spec(family)
    torch.manual_seed(seed)
    ours_class = spec.model
    if name == "ours_all_gather":
        from ocp_graphpar.measure.variants import AllGatherDimeNetPPXL

        ours_class = AllGatherDimeNetPPXL
    ours = ours_class(**{**model_config, **spec.build_options, **OURS.get(name, {})}).to(dtype)
    if name in OURS:
        return ours
    upstream = _upstream_class(name, spec)(**upstream_options(model_config)).to(dtype)
    upstream.load_state_dict(ours.state_dict(), strict=True)
    return upstream


def _upstream_class(name: str, spec: ModelSpec) -> type[torch.nn.Module]:
    if name == spec.upstream_registry_name:
        return spec.upstream
    if name == "gp_gemnet_t" and spec.upstream_graph_parallel is not None:
        return spec.upstream_graph_parallel
    raise ValueError(f"no contender {name!r} for the {spec.family} model")


@contextlib.contextmanager
def running(name: str) -> Iterator[None]:
    """What must hold while contender ``name`` is built and runs: upstream's GP alias."""
    with upstream_gp_alias() if name == "gp_gemnet_t" else contextlib.nullcontext():
        yield
