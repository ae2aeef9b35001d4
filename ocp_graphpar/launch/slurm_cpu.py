"""``fairchem --submit --cpu``: a SLURM job's tasks as gloo ranks, through upstream's own set-up.

Upstream's ``distutils.setup`` has two paths. For a submitted job (``config["submit"]``) it
always initialises NCCL and selects a CUDA device (and logs ``CUDA_VISIBLE_DEVICES``, a
KeyError without GPUs), on one fixed port for the whole machine, so two jobs sharing a node
collide. For ranks that a launcher started (torchrun, or fairchem's own local
``elastic_launch``), it initialises ``config["distributed_backend"]`` (gloo under ``--cpu``)
from the launcher's environment variables.

A CPU job therefore presents each SLURM task as such a launched rank: :func:`as_launched_rank`
sets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from SLURM's
task layout (with a port derived from the job id) and returns the job's config with ``submit``
off, which :class:`~ocp_graphpar.launch.runner.GraphParallelRunner` hands to upstream's
``Runner``. Nothing of fairchem is replaced; the variables are set in the job's own process.

Across nodes, rank 0 runs on the job's first node (SLURM numbers tasks node by node), so the
rendezvous is that node's address as SLURM knows it (:func:`rendezvous_address`), not the
submitting host. Each rank logs one line at start: its host, rank, local rank and GP group.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from typing import TYPE_CHECKING, Any

import torch

from ocp_graphpar.errors import UserFacingError

if TYPE_CHECKING:
    from submitit import JobEnvironment


def is_cpu_job(config: dict[str, Any]) -> bool:
    """Whether ``config`` is that of a ``fairchem --submit --cpu`` run."""
    return bool(config.get("submit") and config.get("cpu"))


def slurm_port(*, job_id: str, restart: int) -> int:
    """A rendezvous port in [20000, 40000) for this job (and requeue), so that jobs sharing a
    node do not collide on upstream's one fixed port."""
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return 20000 + (int(digits) * 7 + restart) % 20000


def as_launched_rank(config: dict[str, Any]) -> dict[str, Any]:
    """Describe this SLURM task to torch.distributed as a launched rank (in ``os.environ``) and
    return a copy of ``config`` for upstream's launched-rank path (``submit`` off)."""
    from submitit import JobEnvironment

    job = JobEnvironment()
    if job.num_tasks != config["world_size"]:
        raise UserFacingError(
            f"this SLURM job has {job.num_tasks} tasks but the run expects "
            f"{config['world_size']} ranks (--num-gpus x --num-nodes); submit with the same "
            "--num-gpus and --num-nodes as the job's tasks."
        )
    # SLURM allots --cpus-per-task CPUs to a task; torch would otherwise take every core of the
    # node, oversubscribing it (the local launcher likewise runs one thread per rank).
    torch.set_num_threads(max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))))
    address = rendezvous_address(job.hostnames)
    port = slurm_port(job_id=job.job_id, restart=int(os.environ.get("SLURM_RESTART_COUNT", 0)))
    os.environ.update(
        MASTER_ADDR=address,
        MASTER_PORT=str(port),
        RANK=str(job.global_rank),
        LOCAL_RANK=str(job.local_rank),
        WORLD_SIZE=str(config["world_size"]),
    )
    from fairchem.core.common.utils import setup_logging

    setup_logging()  # upstream's (its runner calls it next); without it, INFO lines are dropped
    logging.info(rank_placement(job, config, f"{address}:{port}"))
    return {**config, "submit": False}


def rendezvous_address(hosts: list[str]) -> str:
    """Where rank 0 listens: ``127.0.0.1`` in a one-node job; else the job's first node's
    ``NodeAddr`` from ``scontrol`` (the address slurmctld reaches that node by, which the
    node's hostname need not resolve to everywhere), or its hostname if SLURM gives none."""
    if len(hosts) == 1:
        return "127.0.0.1"
    try:
        node = subprocess.run(
            ["scontrol", "-o", "show", "node", hosts[0]],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return hosts[0]
    found = re.search(r"\bNodeAddr=(\S+)", node)
    return found.group(1) if found else hosts[0]


def rank_placement(job: JobEnvironment, config: dict[str, Any], rendezvous: str) -> str:
    """One line on where this rank runs and which GP group it is in: fairchem's GP groups are
    blocks of ``gp_gpus`` consecutive ranks (``gp_utils.setup_gp``)."""
    rank, world = job.global_rank, config["world_size"]
    where = (
        f"rank {rank} of {world} on host {job.hostname} (node {job.node} of {job.num_nodes}, "
        f"local rank {job.local_rank})"
    )
    if not config.get("gp_gpus"):
        return f"{where}, no graph parallelism; rendezvous {rendezvous}"
    size = min(config["gp_gpus"], world)
    group = rank // size
    first, last = group * size, group * size + size - 1
    return f"{where}, GP group {group} (ranks {first}-{last}); rendezvous {rendezvous}"
