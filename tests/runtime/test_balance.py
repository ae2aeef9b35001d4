"""The vectorised balancer equals its plain per-system definition (tests/helpers/balance_reference.py)
on real OC20 batches, molecules, synthetic slabs of many systems, and degenerate batches.

Work weights are dyadic (triplet weight 1/4) so that every sum is exact and both ways of
adding give the same owners; with non-dyadic weights they may differ where a midpoint and a
cut agree to the last bit, and either owner is then as good.
"""

from __future__ import annotations

import pytest
import torch
from helpers.balance_reference import reference_owner
from helpers.oc20 import graph_from_atoms, oc20_atoms, oc20_systems

from ocp_graphpar.parallel.balance import (
    WorkWeights,
    atom_work,
    balanced_spatial_owner,
    fractional_coordinates,
)

DYADIC = WorkWeights(triplet=0.25)


def assert_same_owners(batch, pos, cell, edge_index, *, size):
    work = atom_work(edge_index, batch.numel(), weights=DYADIC)
    ours = balanced_spatial_owner(batch, pos, cell, edge_index, work, size)
    expected = reference_owner(
        batch, fractional_coordinates(batch, pos, cell), edge_index, work, size=size, snap=0.05
    )
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("systems", [1, 3, 6])
@pytest.mark.parametrize("size", [2, 3, 4, 8])
def test_oc20_batches(systems, size):
    graph = graph_from_atoms([oc20_atoms(s) for s in oc20_systems(systems)], cutoff=6.0)
    assert_same_owners(graph.batch, graph.pos, graph.cell, graph.edge_index, size=size)
    # as molecules: Cartesian coordinates, no cell
    assert_same_owners(graph.batch, graph.pos, None, graph.edge_index, size=size)


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_of_uneven_systems(seed):
    """Systems of 1 to 40 atoms, random edges within each, ties in coordinates."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 41, (int(torch.randint(2, 12, (1,), generator=generator)),))
    batch = torch.arange(sizes.numel()).repeat_interleave(sizes)
    pos = torch.randint(0, 4, (batch.numel(), 3), generator=generator).double()  # ties
    cell = 4.0 * torch.eye(3, dtype=torch.double).expand(sizes.numel(), 3, 3)
    starts = torch.cumsum(sizes, 0) - sizes
    system = torch.randint(0, sizes.numel(), (6 * batch.numel(),), generator=generator)
    ends = [(torch.rand(system.numel(), generator=generator) * sizes[system]).long() for _ in "ab"]
    edge_index = torch.stack([starts[system] + ends[0], starts[system] + ends[1]])
    for size in (2, 3, 5, 16):
        assert_same_owners(batch, pos, cell, edge_index, size=size)


def test_degenerate_batches():
    lone = oc20_atoms(oc20_systems(1)[0])[:1]
    graph = graph_from_atoms([lone, oc20_atoms(oc20_systems(2)[1])], cutoff=6.0)
    for size in (2, 7, 300):  # more ranks than atoms; a system without edges
        assert_same_owners(graph.batch, graph.pos, graph.cell, graph.edge_index, size=size)
    one_atom = torch.zeros(1, dtype=torch.long)
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    assert_same_owners(one_atom, torch.zeros(1, 3), None, no_edges, size=4)
