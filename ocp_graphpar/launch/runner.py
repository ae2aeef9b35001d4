"""fairchem's ``Runner`` (what ``--submit`` sends to SLURM), for ``--submit --cpu`` jobs."""

from __future__ import annotations

from typing import Any

from fairchem.core._cli import Runner
from submitit.helpers import DelayedSubmission

from ocp_graphpar.launch.slurm_cpu import as_launched_rank, is_cpu_job


class GraphParallelRunner(Runner):
    """Runs one fairchem job through upstream's ``Runner``, with two differences:

    - a ``--submit --cpu`` job's tasks join as gloo ranks from SLURM's task layout, through
      upstream's set-up for launched ranks (see :mod:`ocp_graphpar.launch.slurm_cpu`);
    - the requeued job after a preemption runs this class again, with the same settings.

    Preemption at optimizer-step boundaries is the trainer's
    (:class:`ocp_graphpar.trainers.GraphParallelTrainer`), which the configs select.
    """

    def __call__(self, config: dict[str, Any]) -> None:
        super().__call__(as_launched_rank(config) if is_cpu_job(config) else config)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Upstream's checkpoint (``checkpoint.pt``, then requeue), resubmitting this class."""
        delayed = super().checkpoint(*args, **kwargs)
        [config] = delayed.args
        # submitit calls this in submitted jobs only; a CPU job ran with ``submit`` off (above).
        return DelayedSubmission(type(self)(), {**config, "submit": True})
