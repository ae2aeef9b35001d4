"""PaiNN-XL, the model ported with ``docs/porting.md``, against upstream PaiNN (float64, real
OC20 structures, spawned gloo ranks)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers.comparison import rel_err
from helpers.gradients import ddp_gradients, reference_gradients
from helpers.oc20 import fairchem_batch, oc20_batch_atoms
from helpers.painn_cases import (
    TINY,
    graph_parallel_model,
    predict,
    predict_graph_parallel,
    step_flops,
    upstream_model,
)

RTOL = 1e-9


@pytest.fixture(scope="module")
def batch():
    return fairchem_batch(oc20_batch_atoms(2))


def test_upstream_state_dict_loads_strictly():
    upstream = upstream_model()
    model = graph_parallel_model()
    assert list(model.state_dict()) == list(upstream.state_dict())
    for key, value in upstream.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("otf_graph", [False, True])
def test_single_process_equals_upstream(batch, otf_graph):
    expected = predict(upstream_model(otf_graph=otf_graph), batch)
    actual = predict(graph_parallel_model(otf_graph=otf_graph), batch)
    assert actual["energy"].shape == expected["energy"].shape
    assert rel_err(actual["energy"], expected["energy"]) < RTOL
    assert rel_err(actual["forces"], expected["forces"]) < RTOL


def test_conservative_forces_are_minus_the_energy_gradient(batch):
    """``direct_forces: False``: -dE/dpos of upstream's own energy (upstream differentiates the
    summed atom features instead)."""
    upstream = upstream_model(direct_forces=False)
    data = batch.clone()
    data.pos.requires_grad_(True)
    energy = upstream(data)["energy"]
    (grad,) = torch.autograd.grad(energy.sum(), data.pos)
    actual = predict(graph_parallel_model(direct_forces=False), batch)
    assert rel_err(actual["energy"], energy.detach()) < RTOL
    assert rel_err(actual["forces"], -grad) < RTOL


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("direct_forces", [True, False])
def test_graph_parallel_equals_single_process(gloo_world, batch, size, direct_forces):
    overrides = {"direct_forces": direct_forces, "otf_graph": size == 3}
    expected = predict(graph_parallel_model(**overrides), batch)
    for result in gloo_world(size).run(predict_graph_parallel, batch, overrides):
        assert rel_err(result["energy"], expected["energy"]) < RTOL
        assert rel_err(result["forces"], expected["forces"]) < RTOL


def test_forward_moves_one_atom_halo_per_layer_and_the_outputs(gloo_world, batch):
    """Per layer, one exchange of the source atoms' scalars and vectors (6 x hidden wide)."""
    results = gloo_world(4).run(predict_graph_parallel, batch, {"direct_forces": True})
    atoms, layers, hidden = batch.pos.shape[0], TINY["num_layers"], TINY["hidden_channels"]
    for rank, result in enumerate(results):
        comm, stats = result["comm"], result["partition"]
        assert set(comm) == {"all_to_all", "all_reduce", "all_gather"}
        assert comm["all_to_all"]["calls"] == layers
        assert comm["all_to_all"]["bytes"] == 8 * layers * 6 * hidden * stats.atom_halo[rank]
        assert comm["all_reduce"]["calls"] == 1  # per-system energies
        assert comm["all_gather"] == {"calls": 1, "bytes": 8 * 3 * (atoms - stats.atoms[rank])}


@pytest.mark.parametrize(
    ("world", "gp", "direct_forces"),
    [(2, 2, True), (3, 3, True), (4, 4, True), (4, 2, True), (3, 3, False), (4, 2, False)],
)
def test_ddp_gradient_equals_single_process(gloo_world, world, gp, direct_forces):
    """The optimizer's view: DDP over dp x gp ranks gives the single-process gradient (second
    order with conservative forces)."""
    dp = world // gp
    atoms = oc20_batch_atoms(2 * dp)
    batches = [fairchem_batch(atoms[2 * d : 2 * d + 2]) for d in range(dp)]
    build = partial(graph_parallel_model, direct_forces=direct_forces)
    reference = partial(upstream_model, direct_forces=True) if direct_forces else build
    expected = reference_gradients(reference, batches)
    for result in gloo_world(world).run(ddp_gradients, build, batches, gp_size=gp):
        assert set(result["grads"]) == set(expected["grads"])
        for name, grad in expected["grads"].items():
            assert rel_err(result["grads"][name], grad) < RTOL, name


def test_activation_checkpointing_keeps_gradients(gloo_world):
    batches = [fairchem_batch(oc20_batch_atoms(2))]
    build = partial(graph_parallel_model, direct_forces=False)
    expected = reference_gradients(build, batches)
    options = {"activation_checkpointing": True}
    for result in gloo_world(2).run(ddp_gradients, partial(build, options=options), batches):
        for name, grad in expected["grads"].items():
            assert rel_err(result["grads"][name], grad) < RTOL, name


def test_work_splits_over_three_ranks(gloo_world):
    """The busiest rank's matmul FLOPs of a training step at P = 3 are at most half of P = 1's."""
    batch = fairchem_batch(oc20_batch_atoms(4))
    single = step_flops(batch, {"direct_forces": True})
    per_rank = gloo_world(3).run(step_flops, batch, {"direct_forces": True})
    assert single > 0
    assert max(per_rank) <= 0.5 * single, (max(per_rank) / single, per_rank, single)
