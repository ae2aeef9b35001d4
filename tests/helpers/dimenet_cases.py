"""Cases run on every rank for the DimeNet++-XL tests (module-level so spawned ranks import them)."""

from __future__ import annotations

import torch
from fairchem.core.models.dimenet_plus_plus import DimeNetPlusPlusWrap

from helpers.comparison import predict
from ocp_graphpar.models import DimeNetPPXL

TINY = dict(
    hidden_channels=8,
    num_blocks=2,
    int_emb_size=4,
    basis_emb_size=3,
    out_emb_channels=6,
    num_spherical=3,
    num_radial=4,
    cutoff=6.0,
    num_before_skip=1,
    num_after_skip=1,
    num_output_layers=2,
    otf_graph=False,
)


def upstream_model(seed: int = 0) -> DimeNetPlusPlusWrap:
    """Upstream DimeNet++ in float64 with random (non-zero) output layers."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    model = DimeNetPlusPlusWrap(**TINY).double()
    with torch.no_grad():  # upstream zero-initialises the last layers; make the test non-trivial
        for block in model.output_blocks:
            block.lin.weight.normal_(0, 0.5)
    return model


def graph_parallel_model(seed: int = 0, all_gather: bool = False, **options) -> DimeNetPPXL:
    """DimeNet++-XL with upstream's weights; ``all_gather``: the benchmark's variant that
    gathers every edge's features instead of the halo of down-projected ones."""
    from ocp_graphpar.measure.variants import AllGatherDimeNetPPXL

    upstream = upstream_model(seed)
    model = (AllGatherDimeNetPPXL if all_gather else DimeNetPPXL)(**TINY, **options).double()
    model.load_state_dict(upstream.state_dict(), strict=True)
    return model


def predict_graph_parallel(batch, options: dict | None = None) -> dict:
    """Energies and forces, and the report of the energy's forward pass on this rank: its
    collectives and the size of the input-edge halo."""
    from ocp_graphpar.parallel import counting

    model = graph_parallel_model(**(options or {}))
    out = predict(model, batch)
    with counting() as comm:
        sharded = model.sharded_forward(batch.clone())
        sharded.plan.sum_over_systems(sharded.atom_energy)
    out["report"] = {"comm": comm.as_dict(), "input_halo": _input_halo_rows(model, batch)}
    return out


def _input_halo_rows(model, batch) -> int:
    from ocp_graphpar.models.dimenetpp_xl.graph import build_triplet_graph

    return build_triplet_graph(model, batch.clone()).input_halo.num_recv
