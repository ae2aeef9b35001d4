"""GemNet-XL against upstream GemNet-T (float64, real OC20 structures, spawned gloo ranks)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers.comparison import rel_err
from helpers.gemnet_cases import (
    graph_parallel_model,
    predict,
    predict_graph_parallel,
    upstream_model,
)
from helpers.gradients import ddp_gradients, reference_gradients
from helpers.oc20 import fairchem_batch, oc20_batch_atoms

RTOL = 1e-10


@pytest.fixture(scope="module")
def batch():
    return fairchem_batch(oc20_batch_atoms(2))


@pytest.mark.parametrize("direct_forces", [True, False])
@pytest.mark.parametrize("otf_graph", [False, True])
def test_single_process_equals_upstream(batch, direct_forces, otf_graph):
    overrides = {"direct_forces": direct_forces, "otf_graph": otf_graph}
    expected = predict(upstream_model(**overrides), batch)
    actual = predict(graph_parallel_model(**overrides), batch)
    assert rel_err(actual["energy"], expected["energy"]) < RTOL
    assert rel_err(actual["forces"], expected["forces"]) < RTOL


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("direct_forces", [True, False])
def test_graph_parallel_equals_upstream(gloo_world, batch, size, direct_forces):
    overrides = {"direct_forces": direct_forces, "otf_graph": size == 3}
    expected = predict(upstream_model(**overrides), batch)
    for result in gloo_world(size).run(predict_graph_parallel, batch, overrides):
        assert rel_err(result["energy"], expected["energy"]) < RTOL
        assert rel_err(result["forces"], expected["forces"]) < RTOL


def test_upstream_state_dict_loads_strictly():
    upstream = upstream_model()
    model = graph_parallel_model()
    assert list(model.state_dict()) == list(upstream.state_dict())
    for key, value in upstream.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize(
    ("world", "gp", "direct_forces"),
    [(2, 2, True), (3, 3, True), (4, 4, True), (4, 2, True), (3, 3, False), (4, 2, False)],
)
def test_ddp_gradient_equals_single_process(gloo_world, world, gp, direct_forces):
    """The optimizer's view: DDP over dp x gp ranks gives the single-process gradient."""
    dp = world // gp
    atoms = oc20_batch_atoms(2 * dp)
    batches = [fairchem_batch(atoms[2 * d : 2 * d + 2]) for d in range(dp)]
    overrides = {"direct_forces": direct_forces}
    expected = reference_gradients(partial(upstream_model, **overrides), batches)
    build = partial(graph_parallel_model, **overrides)
    for result in gloo_world(world).run(ddp_gradients, build, batches, gp_size=gp):
        assert set(result["grads"]) == set(expected["grads"])
        for name, grad in expected["grads"].items():
            assert rel_err(result["grads"][name], grad) < 1e-9, name


@pytest.mark.parametrize("direct_forces", [True, False])
def test_activation_checkpointing_keeps_gradients(gloo_world, direct_forces):
    """Both force modes; with -dE/dpos the loss's backward differentiates recomputed gradients."""
    batches = [fairchem_batch(oc20_batch_atoms(2))]
    expected = reference_gradients(partial(upstream_model, direct_forces=direct_forces), batches)
    build = partial(graph_parallel_model, direct_forces=direct_forces)
    options = {"activation_checkpointing": True}
    results = gloo_world(2).run(ddp_gradients, partial(build, options=options), batches)
    plain = gloo_world(2).run(ddp_gradients, build, batches)
    for result in results:
        for name, grad in expected["grads"].items():
            assert rel_err(result["grads"][name], grad) < 1e-9, name
    # recomputation repeats the blocks' forward exchanges in the backward pass
    assert results[0]["comm"]["all_to_all"]["calls"] > plain[0]["comm"]["all_to_all"]["calls"]


def test_forward_moves_only_halo_rows_and_the_outputs(gloo_world, batch):
    """Per block: one atom-halo and one reverse-edge exchange; no edge tensor is gathered."""
    from helpers.gemnet_cases import TINY, forward_report

    reports = gloo_world(4).run(forward_report, batch, {"direct_forces": True})
    blocks, atoms = TINY["num_blocks"], batch.pos.shape[0]
    for rank, report in enumerate(reports):
        stats, comm = report["partition"], report["comm"]
        assert set(comm) == {"all_to_all", "all_reduce", "all_gather"}
        # edge embedding + one concat layer per block exchange atoms; one bilinear exchange per block
        assert comm["all_to_all"]["calls"] == 1 + 2 * blocks
        halo_bytes = 8 * (
            (1 + blocks) * TINY["emb_size_atom"] * stats.atom_halo[rank]
            + blocks * TINY["emb_size_bil_trip"] * stats.reverse_halo[rank]
        )
        assert comm["all_to_all"]["bytes"] == halo_bytes
        assert comm["all_reduce"]["calls"] == 1  # per-system energies
        assert comm["all_gather"] == {"calls": 1, "bytes": 8 * 3 * (atoms - stats.atoms[rank])}
    assert sum(stats.atoms) == atoms and min(stats.atoms) > 0


def test_lean_bilinear_layer_equals_upstreams_with_its_parameters():
    """The triplet layers without upstream's (emb_size_trip, n_edges, units_out) intermediate:
    same outputs and gradients (inputs and weights), float64, on ragged triplet lists."""
    from fairchem.core.models.gemnet.layers.efficient import (
        EfficientInteractionBilinear,
        EfficientInteractionDownProjection,
    )

    from ocp_graphpar.models.gemnet_xl.bilinear import bilinear, down_projection

    generator = torch.Generator().manual_seed(3)
    num_edges, num_spherical, num_radial, interm, trip, out = 11, 3, 4, 5, 6, 7
    per_edge = torch.tensor([0, 3, 1, 4, 2, 0, 5, 1, 1, 2, 3])  # ragged, with empty lists
    id_ca = torch.repeat_interleave(torch.arange(num_edges), per_edge)
    ragged = torch.cat([torch.arange(int(n)) for n in per_edge])
    kmax = int(per_edge.max())
    down = EfficientInteractionDownProjection(num_spherical, num_radial, interm).double()
    layer = EfficientInteractionBilinear(trip, interm, out).double()

    def run(ours: bool):
        rbf = torch.randn(1, num_edges, num_radial, generator=generator, dtype=torch.float64)
        sph = torch.randn(len(id_ca), num_spherical, generator=generator, dtype=torch.float64)
        m = torch.randn(len(id_ca), trip, generator=generator, dtype=torch.float64)
        for tensor in (rbf, sph, m):
            tensor.requires_grad_()
        if ours:
            basis = down_projection(down, rbf, sph, id_ca, ragged, kmax=kmax)
            result = bilinear(layer, basis, m, id_ca, ragged, kmax=kmax)
        else:
            result = layer(down(rbf, sph, id_ca, ragged), m, id_ca, ragged)
        weights = (down.weight, layer.weight)
        grads = torch.autograd.grad((result**2).sum(), (rbf, sph, m, *weights))
        return result.detach(), grads

    generator.manual_seed(3)
    expected, expected_grads = run(ours=False)
    generator.manual_seed(3)
    result, grads = run(ours=True)
    assert result.shape == (num_edges, out)
    assert rel_err(result, expected) < RTOL
    for grad, reference in zip(grads, expected_grads):
        assert rel_err(grad, reference) < RTOL
