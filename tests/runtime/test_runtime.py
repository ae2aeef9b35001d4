"""The graph-parallel runtime against the single-process computation (float64, gloo ranks)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ase import Atoms
from helpers.oc20 import graph_from_atoms, oc20_atoms, oc20_systems
from helpers.runtime_model import TripletMP, energy_forces_and_grads

from ocp_graphpar.parallel import (
    atom_work,
    build_partition,
    counting,
    gather_rows,
    index_split_owner,
    reduce_partial,
)

RTOL = 1e-10
MODEL_CUTOFF = 4.0


def assert_close(actual, expected, rtol=RTOL):
    scale = expected.abs().max().clamp(min=1e-30)
    assert (actual - expected).abs().max() / scale < rtol


def oc20_batch(count: int, cutoff: float = MODEL_CUTOFF, max_atoms: int = 90):
    return graph_from_atoms(
        [oc20_atoms(s) for s in oc20_systems(count, max_atoms=max_atoms)], cutoff
    )


def single_process(graph):
    return energy_forces_and_grads(graph, plan_kwargs={"size": 1, "rank": 0})


def assert_matches(results, reference):
    for result in results:
        assert_close(result["energy"], reference["energy"])
        assert_close(result["forces"], reference["forces"])
    for key in ("energy_grads", "loss_grads"):
        summed = [sum(parts) for parts in zip(*(r[key] for r in results))]
        for actual, expected in zip(summed, reference[key]):
            assert_close(actual, expected)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_model_matches_single_process_on_oc20(gloo_world, size):
    graph = oc20_batch(2)
    reference = single_process(graph)
    results = gloo_world(size).run(energy_forces_and_grads, graph)
    assert_matches(results, reference)
    assert sum(r["num_atoms"] for r in results) == graph.pos.shape[0]
    assert sum(r["num_edges"] for r in results) == graph.edge_index.shape[1]
    assert sum(r["num_triplets"] for r in results) == reference["num_triplets"]
    if size > 1:
        stats = results[0]["stats"]
        assert stats.cut_edges > 0, "the batch should exercise edges that cross the cut"


def degenerate_graph():
    lone = Atoms("H", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=True)
    pair = Atoms("CO", positions=[[4, 4, 4], [4, 4, 5.15]], cell=[8, 8, 8], pbc=True)
    return graph_from_atoms([lone, pair], MODEL_CUTOFF)


def test_more_ranks_than_atoms_and_a_system_without_edges(gloo_world):
    graph = degenerate_graph()
    assert graph.pos.shape[0] < 4
    assert (graph.edge_index[1] == 0).sum() == 0  # the lone atom has no edges
    results = gloo_world(4).run(energy_forces_and_grads, graph)
    assert_matches(results, single_process(graph))
    assert 0 in [r["num_atoms"] for r in results]


def test_one_atom_system_in_a_real_batch(gloo_world):
    lone = Atoms("H", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=True)
    graph = graph_from_atoms([oc20_atoms(oc20_systems(1)[0]), lone], MODEL_CUTOFF)
    results = gloo_world(3).run(energy_forces_and_grads, graph)
    assert_matches(results, single_process(graph))


def forward_traffic(graph):
    torch.set_default_dtype(torch.float64)
    model = TripletMP().double()
    plan = build_partition(
        graph.batch, graph.pos, graph.cell, graph.edge_index, reverse_edge=graph.reverse_edge
    )
    with counting() as stats:
        model(graph, plan)
    halo_rows = plan.atom_halo.num_recv + plan.reverse_halo.num_recv
    return stats.as_dict(), halo_rows, len(model.message), model.embed.embedding_dim


def test_forward_moves_only_halo_rows(gloo_world):
    graph = oc20_batch(2)
    for stats, halo_rows, layers, width in gloo_world(3).run(forward_traffic, graph):
        assert stats["all_to_all"]["bytes"] == halo_rows * layers * width * 8
        assert stats["all_to_all"]["calls"] == 2 * layers
        assert stats["all_reduce"]["calls"] == 1  # the per-system energies, nothing else
        assert set(stats) == {"all_to_all", "all_reduce"}


def test_single_rank_group_makes_no_collective_call(gloo_world):
    graph = oc20_batch(1)
    [(stats, halo_rows, _, _)] = gloo_world(1).run(forward_traffic, graph)
    assert stats == {} and halo_rows == 0


def gather_energy_and_derivatives(counts, consumer: str, seed=0):
    """Sharded x -> gathered y -> energy; forces on the shards; a loss on the forces.

    ``consumer="replicated"``: every rank computes the whole energy from ``y``.
    ``consumer="partial"``: rank r uses rows ``i % P == r`` and the partial energies are summed.
    """
    from ocp_graphpar.parallel import gather_replicated, gp_rank, gp_size

    torch.manual_seed(seed)
    full = torch.randn(sum(counts), 3, dtype=torch.float64)
    start = sum(counts[: gp_rank()])
    shard = full[start : start + counts[gp_rank()]].clone().requires_grad_(True)
    weights = torch.arange(1.0, 4.0, dtype=torch.float64)
    if consumer == "replicated":
        energy = (torch.sin(gather_replicated(shard, counts)) * weights).sum()
    else:
        used = torch.sin(gather_rows(shard, counts)[gp_rank() :: gp_size()])
        energy = reduce_partial((used * weights).sum())
    (grad,) = torch.autograd.grad(energy, shard, create_graph=True)
    second = reduce_partial((grad**3).sum())
    (grad2,) = torch.autograd.grad(second, shard)
    return energy.detach(), grad.detach(), grad2


@pytest.mark.parametrize("consumer", ["replicated", "partial"])
def test_gathers_are_exact_to_second_order(gloo_world, consumer):
    counts = [2, 0, 3]
    energy, grad, grad2 = gather_energy_and_derivatives([sum(counts)], consumer)
    results = gloo_world(3).run(gather_energy_and_derivatives, counts, consumer)
    assert_close(torch.stack([r[0] for r in results]), energy.expand(3))
    assert_close(torch.cat([r[1] for r in results]), grad)
    assert_close(torch.cat([r[2] for r in results]), grad2)


def reduce_scatter_then_slice(counts, seed=0):
    """Partial sums -> reduce-scatter -> sharded use; and replicated -> slice -> sharded use."""
    from ocp_graphpar.parallel import gp_rank, reduce_scatter_rows, slice_rows

    torch.manual_seed(seed)
    contributions = torch.randn(3, sum(counts), 2, dtype=torch.float64)  # one per rank
    x = contributions[gp_rank()].clone().requires_grad_(True)
    shard = reduce_scatter_rows(x, counts)
    replicated = contributions.sum(0).requires_grad_(True)  # the same on every rank
    energy = reduce_partial(
        (torch.cos(shard) ** 2).sum() + torch.sin(slice_rows(replicated, counts)).sum()
    )
    gx, grep = torch.autograd.grad(energy, [x, replicated], create_graph=True)
    (g2,) = torch.autograd.grad(reduce_partial((gx**2).sum()), x)
    return energy.detach(), gx.detach(), grep.detach(), g2


def test_reduce_scatter_and_slice_are_exact_to_second_order(gloo_world):
    counts = [1, 3, 0]
    results = gloo_world(3).run(reduce_scatter_then_slice, counts)
    torch.manual_seed(0)
    contributions = torch.randn(3, sum(counts), 2, dtype=torch.float64)
    x = contributions.clone().requires_grad_(True)
    replicated = contributions.sum(0)
    energy = (torch.cos(x.sum(0)) ** 2).sum() + torch.sin(replicated).sum()
    (gx,) = torch.autograd.grad(energy, x, create_graph=True)
    (g2,) = torch.autograd.grad((gx**2).sum(), x)
    for rank, (e, grad, grad_replicated, grad2) in enumerate(results):
        assert_close(e, energy.detach())
        assert_close(grad, gx[rank].detach())
        assert_close(grad2, g2[rank])
        assert_close(grad_replicated, torch.cos(replicated))


def all_plans(graph, size, **kwargs):
    return [
        build_partition(
            graph.batch,
            graph.pos,
            graph.cell,
            graph.edge_index,
            size=size,
            rank=r,
            reverse_edge=graph.reverse_edge,
            **kwargs,
        )
        for r in range(size)
    ]


def check_invariants(graph, plans):
    num_atoms, num_edges = graph.pos.shape[0], graph.edge_index.shape[1]
    src = graph.edge_index[0]
    assert torch.equal(torch.cat([p.atoms for p in plans]).sort().values, torch.arange(num_atoms))
    assert torch.equal(torch.cat([p.edges for p in plans]).sort().values, torch.arange(num_edges))
    for plan in plans:
        # halos are complete: every owned edge finds its source atom and its reverse edge
        held_atoms = torch.cat([plan.atoms, plan.atom_halo.recv_global])
        assert torch.equal(held_atoms[plan.edge_src], src[plan.edges])
        held_edges = torch.cat([plan.edges, plan.reverse_halo.recv_global])
        assert torch.equal(held_edges[plan.edge_reverse], graph.reverse_edge[plan.edges])
        assert (plan.atom_owner[plan.atom_halo.recv_global] != plan.rank).all()
        for q, peer in enumerate(plans):  # what q sends to this rank is what this rank expects
            for halo, peer_halo, owned in (
                (plan.atom_halo, peer.atom_halo, peer.atoms),
                (plan.reverse_halo, peer.reverse_halo, peer.edges),
            ):
                start = sum(peer_halo.send_counts[: plan.rank])
                sent = owned[peer_halo.send_index[start : start + peer_halo.send_counts[plan.rank]]]
                first = sum(halo.recv_counts[:q])
                assert torch.equal(sent, halo.recv_global[first : first + halo.recv_counts[q]])


@pytest.mark.parametrize("size", [2, 3, 4, 8])
def test_partition_invariants_on_oc20(size):
    check_invariants(graph := oc20_batch(3), all_plans(graph, size))


def test_partition_invariants_degenerate():
    graph = degenerate_graph()
    for size in (1, 2, 4, 7):
        check_invariants(graph, all_plans(graph, size))


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("systems", [2, 4])
def test_partition_balance_and_locality_on_oc20(size, systems):
    """OC20 graphs as the models see them (6 A cutoff): balanced, and fewer cut edges than a
    contiguous index split of equal balance. Upstream's equal-atom index split is reported too;
    when it cuts fewer edges it is because it ignores balance (it cuts at system boundaries)."""
    graph = oc20_batch(systems, cutoff=6.0, max_atoms=120)
    num_atoms = graph.pos.shape[0]
    plan = all_plans(graph, size)[0]
    work = atom_work(graph.edge_index, num_atoms)
    index_balanced = all_plans(graph, size, atom_owner=index_split_owner(num_atoms, size, work))[0]
    index_upstream = all_plans(graph, size, atom_owner=index_split_owner(num_atoms, size))[0]
    print(
        f"\nP={size} systems={systems} atoms={num_atoms} edges={graph.edge_index.shape[1]}: "
        f"ours max/mean load {plan.stats.load_imbalance:.3f}, cut edges {plan.stats.cut_edges}; "
        f"index split by work {index_balanced.stats.load_imbalance:.3f}, "
        f"{index_balanced.stats.cut_edges}; index split by atoms "
        f"{index_upstream.stats.load_imbalance:.3f}, {index_upstream.stats.cut_edges}"
    )
    assert plan.stats.load_imbalance <= 1.10
    assert plan.stats.cut_edges < index_balanced.stats.cut_edges
    assert (
        plan.stats.cut_edges < index_upstream.stats.cut_edges
        or index_upstream.stats.load_imbalance > 1.10
    )


def test_single_rank_plan_from_shapes_equals_the_general_plan():
    """A GP group of one gets its plan without the balancer or halos; it must be the plan the
    general builder makes when every atom is given to rank 0, statistics included."""
    graph = oc20_batch(3)
    args = (graph.batch, graph.pos, graph.cell, graph.edge_index)
    fast = build_partition(*args, size=1, rank=0, reverse_edge=graph.reverse_edge)
    general = build_partition(
        *args,
        size=1,
        rank=0,
        reverse_edge=graph.reverse_edge,
        atom_owner=torch.zeros_like(graph.batch),
    )
    for name in ("atoms", "edges", "edge_src", "edge_dst", "edge_reverse", "atom_system"):
        assert torch.equal(getattr(fast, name), getattr(general, name)), name
    for name in ("atom_owner", "edge_owner", "edge_rows", "edge_gather_index", "atom_gather_index"):
        assert torch.equal(getattr(fast, name), getattr(general, name)), name
    assert fast.atom_counts == general.atom_counts
    assert fast.stats.load == pytest.approx(general.stats.load, rel=1e-12)  # summed differently
    assert replace(fast.stats, load=general.stats.load) == general.stats


def test_plan_moves_every_index_tensor_to_the_device():
    """At P > 1 the plan is built on the host and moved; nothing may stay behind."""
    from dataclasses import fields

    graph = oc20_batch(2)
    plan = build_partition(
        graph.batch,
        graph.pos,
        graph.cell,
        graph.edge_index,
        size=2,
        rank=1,
        reverse_edge=graph.reverse_edge,
    )
    moved = plan.to(torch.device("meta"))
    for f in fields(moved):
        value = getattr(moved, f.name)
        tensors = [value] if isinstance(value, torch.Tensor) else []
        if hasattr(value, "send_index"):
            tensors = [value.send_index, value.recv_global]
        assert all(t.device.type == "meta" for t in tensors), f.name
    assert moved.stats == plan.stats  # counted on the host, where the plan was built
