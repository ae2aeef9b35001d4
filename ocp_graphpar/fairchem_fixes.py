"""Fixes for fairchem-core 1.10 defects on the graph-parallel training path.

Applied by ``import ocp_graphpar``, which the ``fairchem`` CLI does while it builds a model
of this plugin, before the trainer writes anything. Each fix wraps upstream's function;
nothing in site-packages is edited, and :func:`apply` is idempotent.

- ``save_checkpoint`` writes ``checkpoint.pt`` in place with ``torch.save``. A job killed while
  writing (SLURM preemption, Ctrl-C, out of memory) leaves a truncated file, and the resumed
  run cannot load it. Fixed: write a temporary file in the same folder, flush it to disk, then
  rename it over the old one, so the file is always the old or the new checkpoint.
- ``BaseTrainer.save_results`` (``--mode predict``) and ``OCPTrainer.run_relaxations``
  (``relaxed_positions.npz``) write prediction files in place with ``np.savez_compressed``.
  Fixed: they write into ``results_dir/.partial/`` and each file is renamed into
  ``results_dir`` once complete.
- ``distutils.setup`` for ``--submit`` always initialises NCCL and selects a CUDA device (and
  logs ``CUDA_VISIBLE_DEVICES``, a KeyError without GPUs), on a fixed machine-wide port. Fixed
  for ``--submit --cpu``: gloo, ranks from SLURM's task layout, a port derived from the job id.
  (The job imports the plugin early enough through ``ocp_graphpar.launch.GraphParallelRunner``.)
- ``distutils.cleanup`` destroys the process groups while the trainer's DDP still holds them, so
  the last reference goes when DDP is garbage-collected. ``ProcessGroupGloo``'s destructor then
  joins its worker threads while holding the GIL; a worker that still needs the GIL to release a
  finished collective's tensor never ends, and the rank hangs after its run is done (seen once
  in about 15 ``fairchem`` launches). Fixed: the groups are kept referenced until the process
  exits, so no destructor runs mid-run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ocp_graphpar.atomic import atomic_writer
from ocp_graphpar.errors import UserFacingError

_APPLIED = "_ocp_graphpar_fixed"
PARTIAL_DIR = ".partial"


def atomic_save_checkpoint(
    state: dict, checkpoint_dir: str = "checkpoints/", checkpoint_file: str = "checkpoint.pt"
) -> str:
    """fairchem's ``save_checkpoint``, written atomically: the old file or the new, never half."""
    filename = os.path.join(checkpoint_dir, checkpoint_file)
    with atomic_writer(filename, suffix=".partial") as stream:
        torch.save(state, stream)
    return filename


@contextlib.contextmanager
def _staged_results_dir(trainer) -> Iterator[None]:
    """Point the trainer's ``results_dir`` at ``results_dir/.partial`` and move each file it
    wrote there into ``results_dir`` after the call returns (only the master rank writes)."""
    from fairchem.core.common import distutils

    cmd = trainer.config["cmd"]
    final = Path(cmd["results_dir"])
    if not distutils.is_master():
        yield
        return
    staging = final / PARTIAL_DIR
    staging.mkdir(parents=True, exist_ok=True)
    for stale in staging.iterdir():  # left by a run that died while writing
        stale.unlink()
    cmd["results_dir"] = str(staging)
    try:
        yield
    finally:
        cmd["results_dir"] = str(final)
    for path in staging.iterdir():
        os.replace(path, final / path.name)
    with contextlib.suppress(OSError):
        staging.rmdir()


def _writes_results_atomically(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with _staged_results_dir(self):
            return method(self, *args, **kwargs)

    setattr(wrapper, _APPLIED, True)
    return wrapper


def _slurm_port(job_id: str, restart: int) -> int:
    """A rendezvous port in [20000, 40000) for this job (and requeue), so that jobs sharing a
    node do not collide on upstream's one fixed port."""
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return 20000 + (int(digits) * 7 + restart) % 20000


def setup_slurm_cpu(config: dict) -> None:
    """Initialise gloo for a ``--submit --cpu`` job from SLURM's task layout."""
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
    hosts = job.hostnames
    host = "127.0.0.1" if len(hosts) == 1 else hosts[0]
    port = _slurm_port(job.job_id, int(os.environ.get("SLURM_RESTART_COUNT", 0)))
    config.update(
        rank=job.global_rank, local_rank=job.local_rank, init_method=f"tcp://{host}:{port}"
    )
    dist.init_process_group(
        backend="gloo",
        init_method=config["init_method"],
        world_size=config["world_size"],
        rank=config["rank"],
        timeout=timedelta(minutes=config.get("timeout", 30)),
    )


def _sets_up_slurm_cpu_jobs(setup: Callable) -> Callable:
    @functools.wraps(setup)
    def wrapper(config: dict) -> None:
        if config.get("submit") and config.get("cpu"):
            return setup_slurm_cpu(config)
        return setup(config)

    setattr(wrapper, _APPLIED, True)
    return wrapper


_RETAINED_GROUPS: list = []


def _retains_process_groups(cleanup: Callable) -> Callable:
    @functools.wraps(cleanup)
    def wrapper() -> None:
        from torch.distributed import distributed_c10d

        _RETAINED_GROUPS.extend(distributed_c10d._world.pg_map)
        cleanup()

    setattr(wrapper, _APPLIED, True)
    return wrapper


def apply() -> None:
    """Install every fix (safe to call more than once)."""
    from fairchem.core.common import distutils, utils
    from fairchem.core.modules.normalization import _load_utils
    from fairchem.core.trainers import base_trainer, ocp_trainer

    for module in (utils, base_trainer, _load_utils):
        module.save_checkpoint = atomic_save_checkpoint
    for cls, name in (
        (base_trainer.BaseTrainer, "save_results"),
        (ocp_trainer.OCPTrainer, "run_relaxations"),
    ):
        method = getattr(cls, name)
        if not getattr(method, _APPLIED, False):
            setattr(cls, name, _writes_results_atomically(method))
    if not getattr(distutils.setup, _APPLIED, False):
        distutils.setup = _sets_up_slurm_cpu_jobs(distutils.setup)
    if not getattr(distutils.cleanup, _APPLIED, False):
        distutils.cleanup = _retains_process_groups(distutils.cleanup)
