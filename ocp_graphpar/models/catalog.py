"""The one table tooling reads to find a model: its class, its upstream twin, its widths.

Benchmarks, the memory planner and the demo look models up here (by family, registry name,
class name or import path) and never branch on a model's name; a new model adds one row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from fairchem.core.models.dimenet_plus_plus import DimeNetPlusPlusWrap
from fairchem.core.models.gemnet.gemnet import GemNetT
from fairchem.core.models.gemnet_gp.gemnet import GraphParallelGemNetT
from fairchem.core.models.painn.painn import PaiNN
from torch import nn

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.models.dimenetpp_xl import graph as dimenetpp_graph
from ocp_graphpar.models.dimenetpp_xl.model import DimeNetPPXL
from ocp_graphpar.models.gemnet_xl import graph as gemnet_graph
from ocp_graphpar.models.gemnet_xl.model import GemNetXL
from ocp_graphpar.models.painn_xl import PaiNNXL, painn_graph_size


@dataclass(frozen=True)
class ModelSpec:
    """One graph-parallel model as tooling sees it.

    Attributes:
        family: short name in benchmark suites, results and plans (``"gemnet"``); the key of
            :data:`MODELS`.
        registry_name: name in fairchem's model registry (``"gemnet_xl"``).
        model: the graph-parallel class.
        upstream: fairchem's single-process model with the same parameter names.
        upstream_registry_name: its name in fairchem's registry.
        widths: constructor arguments that are widths (free to scale without changing the
            computation's structure; the planner's probe replaces them).
        graph_size: ``(model, batch) -> {"atoms", "edges", "triplets"[, "kmax"]}`` of this
            rank's graph, as the model builds it.
        precomputed_graph: settings under which the model reads a batch's stored edges.
        build_options: settings every tool-built instance gets (e.g. no automatic fitting).
        max_atomic_number: ``model -> Z``, the heaviest element the model's embedding knows.
        upstream_graph_parallel: fairchem's own graph-parallel twin, if it has one.
        upstream_options: settings under which the model computes what ``upstream`` computes
            (given to an upstream checkpoint loaded into the model for inference).
    """

    family: str
    registry_name: str
    model: type[nn.Module]
    upstream: type[nn.Module]
    upstream_registry_name: str
    widths: tuple[str, ...]
    graph_size: Callable[[nn.Module, object], dict[str, int]]
    max_atomic_number: Callable[[nn.Module], int]
    precomputed_graph: dict = field(default_factory=lambda: {"otf_graph": False})
    build_options: dict = field(default_factory=dict)
    upstream_graph_parallel: type[nn.Module] | None = None
    upstream_options: dict = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        """Every name a config may use for this model (ours or upstream's)."""
        classes = (self.model, self.upstream)
        return {
            self.family,
            self.registry_name,
            self.upstream_registry_name,
            *(cls.__name__ for cls in classes),
            *(f"{cls.__module__}.{cls.__qualname__}" for cls in classes),
            f"ocp_graphpar.models.{self.model.__name__}",
        }


def _atom_embedding_elements(model: nn.Module) -> int:
    """fairchem's ``AtomEmbedding`` (GemNet-T, PaiNN) reads row ``Z - 1``."""
    return model.atom_emb.embeddings.num_embeddings


def _dimenet_elements(model: nn.Module) -> int:
    """DimeNet++'s ``EmbeddingBlock`` reads row ``Z``."""
    return model.emb.emb.num_embeddings - 1


MODELS: dict[str, ModelSpec] = {
    spec.family: spec
    for spec in (
        ModelSpec(
            family="gemnet",
            registry_name="gemnet_xl",
            model=GemNetXL,
            upstream=GemNetT,
            upstream_registry_name="gemnet_t",
            widths=(
                "emb_size_atom",
                "emb_size_edge",
                "emb_size_trip",
                "emb_size_rbf",
                "emb_size_cbf",
                "emb_size_bil_trip",
                "num_radial",
            ),
            graph_size=gemnet_graph.graph_size,
            max_atomic_number=_atom_embedding_elements,
            # upstream GemNet-T asserts its default max_neighbors when the graph is stored
            precomputed_graph={"otf_graph": False, "max_neighbors": 50},
            build_options={"auto_fit_scale_factors": False},
            upstream_graph_parallel=GraphParallelGemNetT,
        ),
        ModelSpec(
            family="dimenet",
            registry_name="dimenetpp_xl",
            model=DimeNetPPXL,
            upstream=DimeNetPlusPlusWrap,
            upstream_registry_name="dimenetplusplus",
            widths=("hidden_channels", "out_emb_channels", "int_emb_size", "basis_emb_size"),
            graph_size=dimenetpp_graph.graph_size,
            max_atomic_number=_dimenet_elements,
            # upstream detaches the angles' positions under PBC (non-conservative forces)
            upstream_options={"detach_angles": True},
        ),
        ModelSpec(
            family="painn",
            registry_name="painn_xl",
            model=PaiNNXL,
            upstream=PaiNN,
            upstream_registry_name="painn",
            widths=("hidden_channels", "num_rbf"),
            graph_size=painn_graph_size,
            max_atomic_number=_atom_embedding_elements,
            build_options={"auto_fit_scale_factors": False},
        ),
    )
}


def _options_only_ours(spec: ModelSpec) -> set[str]:
    """The named arguments of our model's constructor that upstream's lacks."""
    upstream = inspect.signature(spec.upstream.__init__).parameters
    return {
        name
        for name, parameter in inspect.signature(spec.model.__init__).parameters.items()
        if name not in upstream
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


#: Arguments only our models take (dropped when the same config builds the upstream twin).
GRAPH_PARALLEL_OPTIONS = frozenset().union(*map(_options_only_ours, MODELS.values()))


def model_spec(name: str) -> ModelSpec:
    """The table row for a model named by family, registry name, class name or import path."""
    for spec in MODELS.values():
        if name in spec.names:
            return spec
    known = ", ".join(spec.registry_name for spec in MODELS.values())
    raise UserFacingError(
        f"model {name!r} is not one of ocp-graphpar's graph-parallel models ({known}) or their "
        "upstream twins; a new model needs a row in ocp_graphpar/models/catalog.py."
    )
