"""The models a benchmark compares, built on the same weights.

``ours`` is GemNet-XL or DimeNet++-XL; the others are upstream fairchem 1.10 models with the
same parameter names and shapes, loaded from ours' state dict:

- ``gp_gemnet_t``: upstream's graph-parallel GemNet-T. Its forward reads ``graph.distance_vec``,
  which fairchem's ``GraphData`` does not have; :func:`upstream_gp_alias` adds that one name
  while the benchmark runs it, and nowhere else.
- ``gemnet_t`` and ``dimenetplusplus``: upstream's single-process models (P = 1 only).
- ``ours_all_gather``: DimeNet++-XL gathering every edge's features each block (the simple
  design), to show what the halo of down-projected features saves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

GP_OPTIONS = (
    "activation_checkpointing",
    "partition_weights",
    "detach_angles",
    "input_exchange",
    "auto_fit_scale_factors",
)


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    graph_parallel: bool


CONTENDERS = {
    "ours": Contender("ours", "ocp-graphpar", True),
    "gp_gemnet_t": Contender("gp_gemnet_t", "upstream gp_gemnet_t", True),
    "gemnet_t": Contender("gemnet_t", "upstream gemnet_t", False),
    "dimenetplusplus": Contender("dimenetplusplus", "upstream dimenetplusplus", False),
    "ours_all_gather": Contender("ours_all_gather", "ocp-graphpar, all-gather exchange", True),
}


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
    return {key: value for key, value in model_config.items() if key not in GP_OPTIONS}


def build_contender(
    name: str, family: str, model_config: dict, seed: int = 0, dtype=torch.float32
) -> torch.nn.Module:
    """Model ``name`` of ``family`` (``gemnet`` or ``dimenet``), weights drawn from ``seed``.

    Every contender gets the weights ours would get from the same seed, so results differ only
    in how the model runs, never in what it computes.
    """
    from ocp_graphpar.models import DimeNetPPXL, GemNetXL

    ours_class = GemNetXL if family == "gemnet" else DimeNetPPXL
    ours_config = (
        {**model_config, "auto_fit_scale_factors": False} if family == "gemnet" else model_config
    )
    torch.manual_seed(seed)
    if name == "ours_all_gather":
        return DimeNetPPXL(**{**ours_config, "input_exchange": "all_gather"}).to(dtype)
    ours = ours_class(**ours_config).to(dtype)
    if name == "ours":
        return ours
    upstream = _upstream_class(name, family)(**upstream_options(model_config)).to(dtype)
    upstream.load_state_dict(ours.state_dict(), strict=True)
    return upstream


def _upstream_class(name: str, family: str):
    from fairchem.core.models.dimenet_plus_plus import DimeNetPlusPlusWrap
    from fairchem.core.models.gemnet.gemnet import GemNetT
    from fairchem.core.models.gemnet_gp.gemnet import GraphParallelGemNetT

    classes = {
        ("gemnet", "gp_gemnet_t"): GraphParallelGemNetT,
        ("gemnet", "gemnet_t"): GemNetT,
        ("dimenet", "dimenetplusplus"): DimeNetPlusPlusWrap,
    }
    if (family, name) not in classes:
        raise ValueError(f"no contender {name!r} for the {family} family")
    return classes[family, name]


def running(name: str) -> contextlib.AbstractContextManager:
    """What must hold while contender ``name`` runs."""
    return upstream_gp_alias() if name == "gp_gemnet_t" else contextlib.nullcontext()
