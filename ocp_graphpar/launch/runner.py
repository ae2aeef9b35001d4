"""fairchem's ``Runner`` (what ``--submit`` sends to SLURM), loading the plugin in the job."""

from __future__ import annotations

from fairchem.core._cli import Runner
from fairchem.core.common.utils import new_trainer_context

from ocp_graphpar.launch.preemption import checkpoint_at_step_boundaries


class GraphParallelRunner(Runner):
    """Runs one fairchem job, as upstream's ``Runner`` does, with two differences:

    - the plugin (and its fixes) is imported before fairchem builds process groups, so a
      ``--submit --cpu`` job initialises gloo from SLURM's task layout;
    - a preemption or time-out signal during training checkpoints at the next optimizer-step
      boundary (see :func:`checkpoint_at_step_boundaries`), and the requeued job resumes there.
    """

    def __call__(self, config: dict) -> None:
        import ocp_graphpar  # noqa: F401  (installs the fixes)

        with new_trainer_context(config=config) as ctx:
            self.config, self.task, self.trainer = ctx.config, ctx.task, ctx.trainer
            self.task.setup(self.trainer)
            if config.get("mode") == "train":
                with checkpoint_at_step_boundaries(self.trainer):
                    self.task.run()
            else:
                self.task.run()

    def checkpoint(self, *args, **kwargs):
        """Upstream's checkpoint (``checkpoint.pt``, then requeue), resubmitting this class."""
        delayed = super().checkpoint(*args, **kwargs)
        delayed.function = type(self)()
        return delayed
