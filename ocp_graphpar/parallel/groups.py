"""The graph-parallel (GP) and data-parallel (DP) process groups.

The groups are fairchem's own (``fairchem.core.common.gp_utils``), which OCPTrainer creates from
``gp_gpus``: GP groups are rows of consecutive ranks, DP groups the columns. This module reads
them, and sets them up for tests and scripts that run without the trainer. With no GP group,
every query answers as a single-process run (size 1, rank 0) and no collective is ever issued.
"""

from __future__ import annotations

import torch.distributed as dist
from fairchem.core.common import gp_utils

from ocp_graphpar.errors import UserFacingError


def gp_group() -> dist.ProcessGroup | None:
    """The GP group of this rank, or ``None`` when graph parallelism is not set up."""
    return gp_utils.get_gp_group() if gp_utils.initialized() else None


def gp_size() -> int:
    return gp_utils.get_gp_world_size()


def gp_rank() -> int:
    return gp_utils.get_gp_rank() if gp_utils.initialized() else 0


def dp_size() -> int:
    return gp_utils.get_dp_world_size() if gp_utils.initialized() else world_size()


def dp_rank() -> int:
    return gp_utils.get_dp_rank() if gp_utils.initialized() else world_rank()


def world_size() -> int:
    """Ranks of the default process group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def world_rank() -> int:
    """This rank in the default process group (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def check_gp_size(world_size: int, gp_gpus: int) -> None:
    """Raise a clear error when ``gp_gpus`` cannot split ``world_size`` ranks into GP groups."""
    if gp_gpus < 1:
        raise UserFacingError(f"gp_gpus must be at least 1, got {gp_gpus}.")
    if world_size % gp_gpus != 0:
        divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise UserFacingError(
            f"gp_gpus={gp_gpus} does not divide the world size {world_size}: every GP group needs "
            f"the same number of ranks. Use --gp-gpus in {divisors}, or change --num-gpus to a "
            f"multiple of {gp_gpus}."
        )


def setup_groups(gp_gpus: int, backend: str | None = None) -> None:
    """Create fairchem's GP/DP groups on an initialised default process group.

    Replaces groups that already exist, so one set of worker processes can serve several GP sizes.
    """
    if not dist.is_initialized():
        raise UserFacingError(
            "graph parallelism needs torch.distributed: call torch.distributed.init_process_group "
            "first, or run through the fairchem CLI (--num-gpus N --gp-gpus P)."
        )
    check_gp_size(dist.get_world_size(), gp_gpus)
    if gp_utils.initialized():
        teardown_groups()
    backend = backend or dist.get_backend()
    gp_utils.setup_gp({"gp_gpus": gp_gpus, "distributed_backend": backend})


def teardown_groups() -> None:
    """Forget the GP/DP groups (fairchem's ``cleanup_gp``), if any."""
    if gp_utils.initialized():
        gp_utils.cleanup_gp()
