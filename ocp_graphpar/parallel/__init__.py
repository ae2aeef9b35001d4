"""The graph-parallel runtime: process groups, the partition plan, and exact collectives.

Models build one :class:`PartitionPlan` per batch and read it in every layer; the collectives
are autograd functions whose backward passes are their adjoints (see ``collectives``).
"""

from ocp_graphpar.parallel.collectives import (
    all_to_all,
    copy_replicated,
    gather_replicated,
    gather_rows,
    reduce_partial,
    reduce_scatter_rows,
    slice_rows,
)
from ocp_graphpar.parallel.groups import (
    check_gp_size,
    dp_rank,
    dp_size,
    gp_group,
    gp_rank,
    gp_size,
    is_graph_parallel,
    setup_groups,
    teardown_groups,
)
from ocp_graphpar.parallel.partition import (
    Halo,
    PartitionPlan,
    PartitionStats,
    WorkWeights,
    atom_work,
    build_partition,
    index_split_owner,
)
from ocp_graphpar.parallel.stats import CommStats, comm_stats, counting

__all__ = [
    "CommStats",
    "Halo",
    "PartitionPlan",
    "PartitionStats",
    "WorkWeights",
    "all_to_all",
    "atom_work",
    "build_partition",
    "check_gp_size",
    "comm_stats",
    "copy_replicated",
    "counting",
    "dp_rank",
    "dp_size",
    "gather_replicated",
    "gather_rows",
    "gp_group",
    "gp_rank",
    "gp_size",
    "index_split_owner",
    "is_graph_parallel",
    "reduce_partial",
    "reduce_scatter_rows",
    "setup_groups",
    "slice_rows",
    "teardown_groups",
]
