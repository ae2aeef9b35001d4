"""The graph-parallel runtime: process groups, the partition plan, and exact collectives.

Models build one :class:`PartitionPlan` per batch and read it in every layer; the collectives
are autograd functions whose backward passes are their adjoints (see ``collectives``).

=================  ===========================================================================
module             concern
=================  ===========================================================================
``groups``         fairchem's GP/DP process groups, read (and set up for tests)
``collectives``    sharded / partial / replicated transitions as autograd functions
``balance``        which rank owns which atom: spatial order, equal work
``halo``           rows a rank needs from peers, and their exchange
``indexing``       owner/row/slot arithmetic shared by the builders
``plan``           the plan types and what layers ask of them
``partition``      building a batch's plan, and recording the plans built (tests, benchmarks)
``stats``          collective traffic, for tests and benchmarks
``workers``        spawned worker ranks (gloo or NCCL) driven from one process
=================  ===========================================================================
"""

from ocp_graphpar.parallel.balance import WorkWeights, atom_work, index_split_owner
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
    setup_groups,
    teardown_groups,
)
from ocp_graphpar.parallel.halo import Halo
from ocp_graphpar.parallel.partition import build_partition, recording_plans
from ocp_graphpar.parallel.plan import PartitionPlan, PartitionStats
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
    "recording_plans",
    "reduce_partial",
    "reduce_scatter_rows",
    "setup_groups",
    "slice_rows",
    "teardown_groups",
]
