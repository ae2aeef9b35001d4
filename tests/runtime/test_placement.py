"""Ranks of a multi-node run, node-major as SLURM numbers them, and GP groups as fairchem's
``setup_gp`` makes them: a GP group lies in one node exactly when ``--gp-gpus`` divides the
ranks per node, and the launch refuses the layouts where it would not."""

from __future__ import annotations

import argparse

import pytest
import torch

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.launch.cli_hooks import check_launch
from ocp_graphpar.launch.placement import Placement, check_placement


def setup_gp_groups(world_size: int, gp_size: int) -> list[list[int]]:
    """fairchem's GP groups: the rows of ``arange(world).reshape(dp, gp)`` (gp_utils.setup_gp)."""
    return torch.arange(world_size).reshape(-1, gp_size).tolist()


LAYOUTS = [
    (nodes, tasks, gp)
    for nodes in range(1, 9)
    for tasks in range(1, 9)
    for gp in range(1, nodes * tasks + 1)
    if (nodes * tasks) % gp == 0
]


@pytest.mark.parametrize("nodes", range(1, 9))
def test_rank_to_node_and_group_maps(nodes):
    for num_nodes, tasks, gp in (layout for layout in LAYOUTS if layout[0] == nodes):
        placement = Placement(num_nodes=num_nodes, tasks_per_node=tasks, gp_size=gp)
        ranks = range(placement.world_size)
        assert [placement.node(r) for r in ranks] == [r // tasks for r in ranks]  # node-major
        assert [placement.local_rank(r) for r in ranks] == [r % tasks for r in ranks]
        assert placement.gp_groups() == setup_gp_groups(placement.world_size, gp)
        for group_id, group in enumerate(placement.gp_groups()):
            assert all(placement.gp_group(r) == group_id for r in group)
        on_one_node = placement.gp_groups_on_one_node()
        assert on_one_node == (num_nodes == 1 or tasks % gp == 0)
        if on_one_node:
            check_placement(num_nodes=num_nodes, tasks_per_node=tasks, gp_size=gp)
        else:
            with pytest.raises(UserFacingError, match="across nodes"):
                check_placement(num_nodes=num_nodes, tasks_per_node=tasks, gp_size=gp)


def test_launch_refuses_gp_groups_across_nodes_and_names_the_sizes_that_fit():
    args = argparse.Namespace(num_nodes=2, num_gpus=2, gp_gpus=4)
    with pytest.raises(UserFacingError) as refused:
        check_launch(args)
    message = str(refused.value)
    assert "\n" not in message
    assert "--gp-gpus 4 would put GP groups across nodes" in message
    assert "Use --gp-gpus in [1, 2]" in message
    check_launch(argparse.Namespace(num_nodes=2, num_gpus=4, gp_gpus=2))  # 2 groups per node
    check_launch(argparse.Namespace(num_nodes=4, num_gpus=8, gp_gpus=8))  # a group per node


def test_fairchem_cli_refuses_the_layout_before_submitting():
    from test_launch import fairchem_refuses

    message = fairchem_refuses("--submit", "--num-nodes", "2", "--num-gpus", "2", "--gp-gpus", "4")
    assert "--gp-gpus 4 would put GP groups across nodes" in message
