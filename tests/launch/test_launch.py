"""The plugin's hooks into fairchem's launch path: launch checks and preemption handling."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from ocp_graphpar.launch.slurm_cpu import slurm_port
from ocp_graphpar.launch.startup_hook import PTH_LINE, hook_path
from ocp_graphpar.trainers import preemption

REPO = Path(__file__).resolve().parents[2]


def fairchem_refuses(*flags: str) -> str:
    command = [
        str(REPO / ".venv" / "bin" / "fairchem"),
        "--mode",
        "train",
        "--config-yml",
        "configs/s2ef/gemnet_xl_demo.yml",
        "--cpu",
        *flags,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr


def test_startup_hook_is_installed():
    assert hook_path().read_text() == PTH_LINE, "run `make setup` to install the fairchem hook"


def test_fairchem_cli_refuses_a_gp_size_that_does_not_divide_the_ranks():
    message = fairchem_refuses("--num-gpus", "4", "--gp-gpus", "3")
    assert "gp_gpus=3 does not divide the world size 4" in message
    assert "[1, 2, 4]" in message


def test_fairchem_cli_refuses_more_gp_ranks_than_ranks():
    message = fairchem_refuses("--num-gpus", "2", "--gp-gpus", "4")
    assert "--gp-gpus 4 is more than the 2 ranks" in message


class TrainingLoop:
    """The parts of fairchem's training loop the preemption handling touches."""

    def __init__(self):
        self.step, self.epoch, self.updates, self.flushed = 0, 0.0, 0, 0
        self.model = SimpleNamespace(training=True)
        self.device = "cpu"
        self.logger = SimpleNamespace(writer=SimpleNamespace(flush=self._flush))

    def _flush(self):
        self.flushed += 1

    def train(self, disable_eval_tqdm: bool = False):
        for i in range(10):  # as OCPTrainer.train: counter first, then forward/backward
            self.step, self.epoch = i + 1, (i + 1) / 10
            out = self._forward(i)
            if self.step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)
            self._backward(out)

    def _forward(self, batch):
        return batch

    def _backward(self, loss):
        self.updates += 1  # the optimizer step


class LoopTrainer(preemption.StepBoundaryPreemption, TrainingLoop):
    """The trainer's preemption methods over that loop, as in GraphParallelTrainer's bases."""


def test_preemption_signal_checkpoints_at_the_next_step_boundary(monkeypatch):
    """The signal lands after fairchem advanced its step counter to 3 but before step 3's
    optimizer update; the checkpoint must record 3 completed steps and 3 updates."""
    from ocp_graphpar.trainers import GraphParallelTrainer

    assert issubclass(GraphParallelTrainer, preemption.StepBoundaryPreemption)
    monkeypatch.setattr(preemption, "_submitit_signal", lambda: signal.SIGUSR2)
    seen = []

    def submitit_handler(signum, frame):
        seen.append((trainer.step, trainer.epoch, trainer.updates, trainer.flushed))
        raise SystemExit(-1)

    trainer = LoopTrainer()
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit):
            trainer.train()
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # submitit's again
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [(3, 0.3, 3, 1)]  # and the metrics logged so far were written out


def test_outside_a_submitit_job_training_is_upstreams():
    trainer = LoopTrainer()
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    try:
        trainer.train()  # the signal at step 3 is handled at once, by the handler in place
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert (trainer.step, trainer.updates) == (10, 10)


def test_slurm_cpu_jobs_get_a_port_per_job_and_requeue():
    ports = {slurm_port(job_id=job, restart=r) for job in ("4242", "4243") for r in (0, 1)}
    assert len(ports) == 4 and all(20000 <= port < 40000 for port in ports)


@pytest.mark.parametrize(
    ("flags", "preset", "expected"),
    [
        ({"cpu": True, "submit": False, "num_gpus": 2}, None, "1"),  # 2 cores, 2 ranks
        ({"cpu": True, "submit": False, "num_gpus": 2}, "3", "3"),  # the user's setting stays
        ({"cpu": True, "submit": True, "num_gpus": 2}, None, None),  # SLURM sizes its tasks
        ({"cpu": False, "submit": False, "num_gpus": 2}, None, None),
        ({"cpu": True, "submit": False, "num_gpus": 1}, None, None),
    ],
)
def test_local_cpu_ranks_share_the_cores(flags, preset, expected, monkeypatch):
    from ocp_graphpar.launch.cli_hooks import share_cores_among_ranks

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if preset is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", preset)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    share_cores_among_ranks(SimpleNamespace(**flags))
    assert os.environ.get("OMP_NUM_THREADS") == expected
