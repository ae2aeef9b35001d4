"""``fairchem --submit`` through submitit on a real single-node SLURM cluster, on CPU (gloo).

The cluster (Debian's slurmctld, slurmd and munge) is installed, started and stopped by
``scripts/slurm/*.sh``. Set ``KEEP_LOCAL_SLURM=1`` to leave it running after the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FAIRCHEM = REPO / ".venv" / "bin" / "fairchem"
SCRIPTS = REPO / "scripts" / "slurm"
SLURM_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local"))
CONFIG = "configs/s2ef/gemnet_xl_demo.yml"


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("a local SLURM cluster needs root and apt-get (it installs slurmd/munge)")
    start = SCRIPTS / "start_local_slurm.sh"
    subprocess.run(["bash", str(start)], check=True, stdin=subprocess.DEVNULL, timeout=900)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{SLURM_DIR / 'bin'}{os.pathsep}{path}"  # sacct stand-in for submitit
    yield
    os.environ["PATH"] = path
    if not os.environ.get("KEEP_LOCAL_SLURM"):
        subprocess.run(["bash", str(SCRIPTS / "stop_local_slurm.sh")], timeout=120)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from helpers.tiny_data import tiny_demo_dataset

    return tiny_demo_dataset(tmp_path_factory.mktemp("slurm") / "data", max_steps=10)


def fairchem_train(data: Path, run_dir: Path, *flags: str) -> str:
    command = [
        str(FAIRCHEM),
        "--mode",
        "train",
        "--config-yml",
        CONFIG,
        "--cpu",
        "--num-gpus",
        "2",
        "--gp-gpus",
        "2",
        "--run-dir",
        str(run_dir),
        "--print-every",
        "1",
        f"--dataset.train.src={data / 's2ef' / 'train'}",
        f"--dataset.val.src={data / 's2ef' / 'val'}",
        *flags,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def submit(data: Path, tmp_path: Path, *flags: str) -> str:
    """Submit a 2-task GP training job; returns its SLURM job id."""
    log = fairchem_train(
        data,
        tmp_path / "run",
        "--submit",
        "--slurm-mem",
        "4",
        "--slurm-timeout",
        "1",
        "--logdir",
        str(tmp_path / "jobs"),
        "--identifier",
        "gp-slurm",
        *flags,
    )
    return re.search(r"Submitted jobs: (\S+)", log).group(1)


def wait_for_job(job_id: str, tmp_path: Path, timeout_s: float = 900):
    import submitit

    job = submitit.SlurmJob(folder=tmp_path / "jobs" / "%j", job_id=job_id, tasks=(0, 1))
    deadline = time.monotonic() + timeout_s
    while not job.done():
        assert time.monotonic() < deadline, f"job {job_id} still {job.state} after {timeout_s} s"
        start_requeued_job_now(job_id)
        time.sleep(2)
    return job


def start_requeued_job_now(job_id: str) -> None:
    """SLURM holds a requeued job back for a while (Reason=BeginTime); skip the wait."""
    state = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60
    ).stdout
    if "JobState=PENDING" in state and "Reason=BeginTime" in state:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=60)


def job_log(job_id: str, tmp_path: Path) -> str:
    folder = tmp_path / "jobs" / job_id
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*_0_log.*")))


def training_losses(run_dir: Path) -> tuple[list[int], list[float], int]:
    """Every logged (step, loss) of a run, across restarts, and the number of event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [logs] = run_dir.glob("logs/tensorboard/*")
    events = EventAccumulator(str(logs), purge_orphaned_data=False, size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars("train/loss")
    return [p.step for p in points], [p.value for p in points], len(list(logs.glob("events.*")))


def test_graph_parallel_training_job_runs_on_slurm(slurm_cluster, dataset, tmp_path):
    job_id = submit(dataset, tmp_path, "--optim.max_epochs=1")
    job = wait_for_job(job_id, tmp_path)
    assert job.results() == [None, None]  # both tasks finished the run
    log = job_log(job_id, tmp_path)
    assert "initializing graph parallel with size 2" in log and "Evaluating on val" in log
    assert list((tmp_path / "run").glob("checkpoints/*/checkpoint.pt"))


def test_requeued_job_resumes_without_losing_a_step(slurm_cluster, dataset, tmp_path):
    epochs = "--optim.max_epochs=3"
    fairchem_train(dataset, tmp_path / "reference", epochs)  # the same run, never interrupted
    ref_steps, ref_losses, _ = training_losses(tmp_path / "reference")

    job_id = submit(dataset, tmp_path, epochs)
    deadline = time.monotonic() + 600
    while "step: 3.00e+00" not in job_log(job_id, tmp_path):
        assert time.monotonic() < deadline, "the job did not reach step 3"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    job = wait_for_job(job_id, tmp_path)
    assert job.results() == [None, None]

    log = job_log(job_id, tmp_path)
    stopped = int(re.search(r"checkpointing after step (\d+)", log).group(1))
    steps, losses, runs = training_losses(tmp_path / "run")
    assert runs == 2 and 3 <= stopped < ref_steps[-1]  # the job really was stopped and requeued
    assert steps == ref_steps == list(range(1, len(steps) + 1))  # none lost, none repeated
    # Two uninterrupted runs already differ by float32 rounding (threads, reduction order), which
    # Adam grows to about 1e-3 over these steps; one missing or repeated step is far larger.
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-2)
    after = slice(stopped, None)
    assert not np.allclose(losses[after], ref_losses[stopped - 1 : -1], rtol=1e-2)
