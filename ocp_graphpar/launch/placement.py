"""Where the ranks of a multi-node run sit, and the rule that keeps a GP group on one node.

SLURM numbers a job's tasks node-major (block distribution: node 0 holds ranks ``0 .. T - 1``
for ``T`` tasks per node), and fairchem's ``setup_gp`` makes GP groups of contiguous ranks
(``arange(world).reshape(dp, gp)``) and DP groups of every ``gp``-th rank. So a GP group lies
inside one node exactly when the GP size divides the tasks per node. It must: a GP group
exchanges small, latency-bound messages in every layer, which stay cheap only on a node's own
links; data-parallel replicas, which exchange gradients once per step, may span nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ocp_graphpar.errors import UserFacingError


@dataclass(frozen=True)
class Placement:
    """``num_nodes`` x ``tasks_per_node`` ranks split into GP groups of ``gp_size``."""

    num_nodes: int
    tasks_per_node: int
    gp_size: int

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.tasks_per_node

    def node(self, rank: int) -> int:
        """The node that runs ``rank``."""
        return rank // self.tasks_per_node

    def local_rank(self, rank: int) -> int:
        """``rank``'s place among its node's tasks."""
        return rank % self.tasks_per_node

    def gp_group(self, rank: int) -> int:
        """The GP group ``rank`` belongs to (its DP rank)."""
        return rank // self.gp_size

    def gp_groups(self) -> list[list[int]]:
        """The ranks of each GP group, as fairchem's ``setup_gp`` makes them."""
        return [
            list(range(start, start + self.gp_size))
            for start in range(0, self.world_size, self.gp_size)
        ]

    def gp_groups_on_one_node(self) -> bool:
        return all(len({self.node(r) for r in group}) == 1 for group in self.gp_groups())


def check_placement(*, num_nodes: int, tasks_per_node: int, gp_size: int) -> Placement:
    """The placement of a run, or a one-line error naming the ``--gp-gpus`` values that fit
    when a GP group would span nodes."""
    placement = Placement(num_nodes=num_nodes, tasks_per_node=tasks_per_node, gp_size=gp_size)
    if num_nodes > 1 and tasks_per_node % gp_size != 0:
        fits = [d for d in range(1, tasks_per_node + 1) if tasks_per_node % d == 0]
        raise UserFacingError(
            f"--gp-gpus {gp_size} would put GP groups across nodes (--num-gpus {tasks_per_node} "
            f"ranks per node): a GP group exchanges small messages in every layer and must stay "
            f"inside one node. Use --gp-gpus in {fits}, or run a multiple of {gp_size} ranks "
            "per node."
        )
    return placement
