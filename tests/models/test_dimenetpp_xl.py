"""DimeNet++-XL against upstream DimeNet++ and against finite differences (float64, real OC20)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers.comparison import rel_err
from helpers.dimenet_cases import (
    TINY,
    graph_parallel_model,
    predict,
    predict_graph_parallel,
    upstream_model,
)
from helpers.gradients import ddp_gradients, reference_gradients
from helpers.oc20 import fairchem_batch, oc20_batch_atoms


@pytest.fixture(scope="module")
def batch():
    return fairchem_batch(oc20_batch_atoms(2))


def central_difference_forces(model, batch, components, h=1e-5):
    forces = []
    for atom, axis in components:
        energies = []
        for sign in (1, -1):
            shifted = batch.clone()
            shifted.pos = shifted.pos.detach().clone()
            shifted.pos[atom, axis] += sign * h
            energies.append(model(shifted)["energy"].detach().sum())
        forces.append(-(energies[0] - energies[1]) / (2 * h))
    return torch.stack(forces)


def test_upstream_weights_load_and_energies_match(batch):
    expected = predict(upstream_model(), batch)
    actual = predict(graph_parallel_model(), batch)
    assert rel_err(actual["energy"], expected["energy"]) < 1e-10


def test_forces_are_the_gradient_of_the_energy(batch):
    """Ours match central differences; upstream's detached-angle forces do not."""
    components = [(0, 0), (5, 2), (40, 1), (60, 2), (87, 0)]
    model = graph_parallel_model()
    numeric = central_difference_forces(model, batch, components)
    ours = predict(model, batch)["forces"]
    upstream = predict(upstream_model(), batch)["forces"]
    picked = lambda f: torch.stack([f[a, x] for a, x in components])  # noqa: E731
    assert rel_err(picked(ours), numeric) < 1e-6
    assert rel_err(picked(upstream), numeric) > 1e-3


def test_detached_angles_reproduce_upstream_forces(batch):
    expected = predict(upstream_model(), batch)
    actual = predict(graph_parallel_model(detach_angles=True), batch)
    assert rel_err(actual["forces"], expected["forces"]) < 1e-10


@pytest.mark.parametrize("size", [2, 3, 4])
def test_graph_parallel_equals_single_process(gloo_world, batch, size):
    energy_ref = predict(upstream_model(), batch)["energy"]
    forces_ref = predict(graph_parallel_model(), batch)["forces"]
    for result in gloo_world(size).run(predict_graph_parallel, batch):
        assert rel_err(result["energy"], energy_ref) < 1e-10
        assert rel_err(result["forces"], forces_ref) < 1e-10


def test_forward_exchanges_only_down_projected_input_edges(gloo_world, batch):
    for result in gloo_world(4).run(predict_graph_parallel, batch):
        comm, halo_rows = result["report"]["comm"], result["report"]["input_halo"]
        assert set(comm) == {"all_to_all", "all_reduce"}
        assert comm["all_to_all"]["calls"] == TINY["num_blocks"]
        assert (
            comm["all_to_all"]["bytes"] == 8 * TINY["int_emb_size"] * halo_rows * TINY["num_blocks"]
        )
        assert comm["all_reduce"]["calls"] == 1


@pytest.mark.parametrize(("world", "gp"), [(2, 2), (3, 3), (4, 4), (4, 2)])
def test_ddp_gradient_equals_single_process(gloo_world, world, gp):
    """Second order: the loss is on -dE/dpos."""
    dp = world // gp
    atoms = oc20_batch_atoms(2 * dp)
    batches = [fairchem_batch(atoms[2 * d : 2 * d + 2]) for d in range(dp)]
    expected = reference_gradients(graph_parallel_model, batches)
    for result in gloo_world(world).run(ddp_gradients, graph_parallel_model, batches, gp_size=gp):
        for name, grad in expected["grads"].items():
            assert rel_err(result["grads"][name], grad) < 1e-9, name


def test_activation_checkpointing_keeps_gradients(gloo_world):
    batches = [fairchem_batch(oc20_batch_atoms(2))]
    expected = reference_gradients(graph_parallel_model, batches)
    build = partial(graph_parallel_model, activation_checkpointing=True)
    for result in gloo_world(2).run(ddp_gradients, build, batches):
        for name, grad in expected["grads"].items():
            assert rel_err(result["grads"][name], grad) < 1e-9, name


def test_all_gather_alternative_gives_the_same_results_and_moves_more(gloo_world, batch):
    """The simple design (all-gather of hidden-wide edge features) for the bytes comparison."""
    halo = gloo_world(4).run(predict_graph_parallel, batch)
    gather = gloo_world(4).run(predict_graph_parallel, batch, {"all_gather": True})
    for ours, simple in zip(halo, gather):
        assert rel_err(simple["energy"], ours["energy"]) < 1e-10
        assert rel_err(simple["forces"], ours["forces"]) < 1e-10
        halo_bytes = ours["report"]["comm"]["all_to_all"]["bytes"]
        assert simple["report"]["comm"]["all_gather"]["bytes"] > 2 * halo_bytes


def test_unknown_exchange_is_refused():
    from ocp_graphpar.errors import UserFacingError
    from ocp_graphpar.models import DimeNetPPXL

    with pytest.raises(UserFacingError, match="input_exchange"):
        DimeNetPPXL(**TINY, input_exchange="broadcast")
