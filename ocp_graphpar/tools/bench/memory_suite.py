"""Issue #19's memory records: model state per rank with and without sharded optimizer state.

A workload with a ``memory:`` section (``configs/bench/default.yml``'s ``memory_*``) measures,
besides its runs (e.g. ``ours_ck``, ours with activation checkpointing, at every P):

- ``state_split`` (P = 1): the unsharded model state of one rank and the share each rank of a
  world of ``memory.world`` ranks would hold sharded, from the trainer's own partition
  computed in one process (:func:`~ocp_graphpar.measure.state.state_split`);
- ``state_world`` (only with ``memory.spawned: true``, on the suite's world of ``memory.world``
  ranks): each spawned rank's state unsharded and sharded, measured on that rank
  (:func:`~ocp_graphpar.measure.state.rank_state_bytes`). A world of XL models unsharded
  does not fit a small machine, so this is for narrower workloads.

Such workloads get no plain ``state`` record (``state_split`` holds it).
"""

from __future__ import annotations

from functools import partial

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.bench.jobs import Job, first_rank_record

#: The keys a workload's ``memory:`` section may set.
MEMORY_KEYS = {"world", "spawned"}


def check_memory_spec(name: str, memory: dict, sizes: list[int]) -> None:
    """A clear error for a ``memory:`` section the suite cannot run."""
    unknown = set(memory) - MEMORY_KEYS
    if unknown:
        raise UserFacingError(
            f"workload {name}: unknown memory keys {sorted(unknown)}; choose from "
            f"{sorted(MEMORY_KEYS)}"
        )
    world = int(memory.get("world", 4))
    if memory.get("spawned") and world not in sizes:
        raise UserFacingError(
            f"workload {name}: memory.spawned measures on the suite's world of "
            f"{world} ranks, but the suite's sizes are {sizes}"
        )


def memory_jobs(workload, config: dict, defined: str, *, size: int) -> list:
    """The memory records of ``workload`` made on the suite's world of ``size`` ranks."""
    from ocp_graphpar.measure.state import rank_state_bytes, state_split

    if not workload.memory:
        return []
    name, world = workload.name, int(workload.memory.get("world", 4))
    jobs = []
    if size == 1:
        jobs.append(
            Job(
                1,
                ("state_split", name),
                defined,
                f"{name} model state, split",
                state_split,
                (workload.family, config),
                partial(first_rank_record, "state_split", name),
                {"world_size": world},
            )
        )
    if size == world and workload.memory.get("spawned"):
        jobs.append(
            Job(
                world,
                ("state_world", name),
                defined,
                f"{name} model state on {world} ranks",
                rank_state_bytes,
                (workload.family, config),
                partial(_world_record, name),
            )
        )
    return jobs


def _world_record(workload: str, per_rank: list[dict], _threads: int) -> dict:
    return {"kind": "state_world", "workload": workload, "per_rank": per_rank}
