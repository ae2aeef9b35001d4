"""``fairchem --submit --cpu`` across two nodes of a real SLURM cluster on this machine.

``SLURM_NODES=2 scripts/slurm/start_local_slurm.sh`` runs each node's slurmd in its own network
and UTS namespace (hostnames node1 and node2, addresses on a private bridge), so the job's ranks
on different nodes have different hostnames and talk over TCP between different addresses. The
job trains GemNet-XL (demo widths) on 2 nodes x 2 tasks with ``--gp-gpus 2``: each GP group
lies inside one node, the data-parallel replicas span the two, and the rendezvous is the first
node's address. Set ``KEEP_LOCAL_SLURM=1`` to leave the cluster running after the tests.
"""

from __future__ import annotations

import contextlib
import json
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
NET = os.environ.get("SLURM_NET", "10.77.0")  # the scripts' defaults, unless set for both
NET_NAME = os.environ.get("SLURM_NET_NAME", "slurmlc")
NODES = {"node1": f"{NET}.11", "node2": f"{NET}.12"}
CONFIG = "configs/s2ef/gemnet_xl_demo.yml"
TASKS = (0, 1, 2, 3)

#: The line each rank logs at start (``ocp_graphpar.launch.slurm_cpu.rank_placement``).
PLACEMENT = re.compile(
    r"rank (?P<rank>\d+) of 4 on host (?P<host>\S+) \(node (?P<node>\d+) of 2, "
    r"local rank (?P<local>\d+)\), GP group (?P<group>\d+) \(ranks (?P<first>\d+)-(?P<last>\d+)\); "
    r"rendezvous (?P<address>[\d.]+):(?P<port>\d+)"
)


def namespaces_missing() -> str | None:
    """Why this machine cannot run a multi-node cluster, or None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "a local SLURM cluster needs root and apt-get (it installs slurmd/munge)"
    tools = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if tools:
        return f"a multi-node local cluster needs {', '.join(tools)} (iproute2, util-linux)"
    probe = subprocess.run(
        ["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return f"network/UTS namespaces are not available here: {probe.stderr.strip()}"
    return None


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, which this machine reaps lazily, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cluster_processes() -> set[int]:
    """The daemons' pids and every process in the nodes' namespaces."""
    pids = {int(p.read_text()) for p in SLURM_DIR.glob("*.pid") if p.read_text().strip()}
    for node in NODES:
        found = subprocess.run(
            ["ip", "netns", "pids", f"{NET_NAME}-{node}"], capture_output=True, text=True
        )
        pids.update(int(pid) for pid in found.stdout.split())
    return pids


def leftovers(processes: set[int]) -> list[str]:
    """What of the cluster is still there after ``stop_local_slurm.sh``."""
    ours = f"{NET_NAME}-"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    namespaces = [line.split()[0] for line in listed.splitlines()]
    listed = subprocess.run(["ip", "-brief", "link"], capture_output=True, text=True).stdout
    links = [line.split()[0].split("@")[0] for line in listed.splitlines()]
    return [
        *(f"namespace {name}" for name in namespaces if name.startswith(ours)),
        *(f"link {name}" for name in links if name.startswith(ours)),
        *(f"process {pid}" for pid in sorted(processes) if running(pid)),
        *([str(SLURM_DIR / "made")] if (SLURM_DIR / "made").exists() else []),
    ]


@pytest.fixture(scope="module")
def two_nodes():
    reason = namespaces_missing()
    if reason:
        pytest.skip(reason)
    path = os.environ["PATH"]
    processes: set[int] = set()
    try:
        subprocess.run(
            ["bash", str(SCRIPTS / "start_local_slurm.sh")],
            env={**os.environ, "SLURM_NODES": "2"},
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=900,
        )
        processes = cluster_processes()
        os.environ["PATH"] = f"{SLURM_DIR / 'bin'}{os.pathsep}{path}"  # sacct stand-in for submitit
        yield
    finally:
        os.environ["PATH"] = path
        if not os.environ.get("KEEP_LOCAL_SLURM"):
            processes |= cluster_processes()
            subprocess.run(["bash", str(SCRIPTS / "stop_local_slurm.sh")], check=True, timeout=120)
            assert leftovers(processes) == [], "stop_local_slurm.sh left these behind"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The demo set in OC20's LMDB layout: a training and a validation LMDB, a few systems."""
    from helpers.tiny_data import tiny_demo_dataset

    return tiny_demo_dataset(tmp_path_factory.mktemp("multinode") / "data")


def submit(mode: str, data: Path, out: Path, *flags: str) -> str:
    """Submit a 2-node x 2-task GP job of ``mode``; returns its SLURM job id."""
    command = [
        str(FAIRCHEM),
        "--mode",
        mode,
        "--config-yml",
        CONFIG,
        "--cpu",
        "--submit",
        "--num-nodes",
        "2",
        "--num-gpus",
        "2",
        "--gp-gpus",
        "2",
        "--slurm-mem",
        "4",
        "--slurm-timeout",
        "1",
        "--run-dir",
        str(out / "run"),
        "--logdir",
        str(out / "jobs"),
        "--identifier",
        f"two-nodes-{mode}",
        *flags,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return re.search(r"Submitted jobs: (\S+)", done.stdout + done.stderr).group(1)


def finish(job_id: str, out: Path, timeout_s: float = 600) -> list[str]:
    """Wait for the job; check that its 4 tasks succeeded; return their logs, by rank."""
    import submitit

    job = submitit.SlurmJob(folder=out / "jobs" / "%j", job_id=job_id, tasks=TASKS)
    deadline = time.monotonic() + timeout_s
    while not job.done():
        assert time.monotonic() < deadline, f"job {job_id} still {job.state} after {timeout_s} s"
        time.sleep(2)
    assert job.results() == [None] * len(TASKS)
    folder = out / "jobs" / job_id
    return [(folder / f"{job_id}_{task}_log.out").read_text(errors="replace") for task in TASKS]


def check_placement(logs: list[str]) -> None:
    """Ranks 0-1 on one host, 2-3 on the other: each GP group in one node, DP across both, all
    meeting at the first node's address on one port; each rank said so once."""
    hosts = [re.search(r"JobEnvironment\(.*hostname=(\w+)", log).group(1) for log in logs]
    assert hosts == ["node1", "node1", "node2", "node2"]
    ports = set()
    for rank, log in enumerate(logs):
        [line] = [m.groupdict() for m in PLACEMENT.finditer(log)]
        assert line["host"] == hosts[rank] and int(line["rank"]) == rank
        assert (int(line["node"]), int(line["local"])) == divmod(rank, 2)
        first = rank - rank % 2  # of its GP group
        group = {"group": rank // 2, "first": first, "last": first + 1}
        assert {key: int(line[key]) for key in group} == group
        assert line["address"] == NODES["node1"]
        ports.add(line["port"])
    assert len(ports) == 1


@pytest.fixture(scope="module")
def trained(two_nodes, dataset, tmp_path_factory):
    """One training epoch of the 2-node job: its output folder and per-task logs."""
    out = tmp_path_factory.mktemp("train2n")
    job_id = submit(
        "train",
        dataset,
        out,
        "--print-every",
        "1",
        "--optim.max_epochs=1",
        f"--dataset.train.src={dataset / 's2ef' / 'train'}",
        f"--dataset.val.src={dataset / 's2ef' / 'val'}",
    )
    return out, finish(job_id, out)


def test_two_nodes_with_their_own_hostnames_and_addresses(two_nodes):
    nodes = subprocess.run(["sinfo", "-h", "-o", "%D"], capture_output=True, text=True, timeout=60)
    assert nodes.stdout.strip() == "2"
    step = subprocess.run(
        ["srun", "-N2", "--ntasks-per-node=1", "-l", "sh", "-c", "echo $(hostname) $(hostname -I)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert step.returncode == 0, step.stderr
    lines = sorted(step.stdout.splitlines())
    assert lines == [
        f"{rank}: {node} {address}" for rank, (node, address) in enumerate(NODES.items())
    ]


def test_graph_parallel_inside_nodes_data_parallel_across(trained):
    out, logs = trained
    check_placement(logs)
    assert "initializing graph parallel with size 2" in logs[0]
    assert "initializing ddp with size 2" in logs[0] and "Evaluating on val" in logs[0]
    assert list((out / "run").glob("checkpoints/*/checkpoint.pt"))


def test_predictions_from_two_nodes(trained, dataset, tmp_path):
    [checkpoint] = (trained[0] / "run").glob("checkpoints/*/checkpoint.pt")
    job_id = submit(
        "predict",
        dataset,
        tmp_path,
        f"--dataset.test.src={dataset / 's2ef' / 'val'}",
        "--checkpoint",
        str(checkpoint),
        "--task.prediction_dtype=float32",
    )
    check_placement(finish(job_id, tmp_path))
    [predictions] = (tmp_path / "run").glob("results/*/*_predictions.npz")
    frames = json.loads((dataset / "dataset.json").read_text())["splits"]["s2ef/val"]["samples"]
    with np.load(predictions) as result:
        assert len(result["ids"]) == len(result["energy"]) == frames
        assert np.isfinite(result["forces"]).all()


#: The lost-node runs: 4 epochs of 3 steps (24 frames, 4 per GP group, 2 replicas), a checkpoint
#: every 2 steps, and a collective timeout of 2 minutes (``distutils.setup`` reads ``timeout``).
#: The job is killed once rank 0 has logged step 5, leaving 7 steps (a few seconds) to do.
LOST_NODE_RUN = ("--print-every", "1", "--optim.max_epochs=4", "--optim.checkpoint_every=2")
LAST_STEP = 12
COLLECTIVE_TIMEOUT_MIN = 2
ENDED = re.compile(r"JobState=(\w+)")


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """Every ``train/loss`` the run logged to TensorBoard, by step (one run, one event file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [logs] = run_dir.glob("logs/tensorboard/*")
    events = EventAccumulator(str(logs), purge_orphaned_data=False, size_guidance={"scalars": 0})
    events.Reload()
    return {point.step: point.value for point in events.Scalars("train/loss")}


def logged_steps(log: str) -> list[int]:
    """The steps rank 0 logged (``--print-every 1``), in order."""
    return [round(float(step)) for step in re.findall(r"\bstep: ([\d.e+-]+)", log)]


def job_state(job_id: str) -> str:
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60
    ).stdout
    found = ENDED.search(shown)
    return found.group(1) if found else "GONE"


def kill_node_step(node: str) -> list[str]:
    """SIGKILL every process of the job step on ``node`` (its ranks), as a node lost with its
    processes; its slurmd and slurmstepd stay, so that SLURM hears of the end and the node
    stays usable. Returns what was killed, as ``pid:name``."""
    listed = subprocess.run(
        ["ip", "netns", "pids", f"{NET_NAME}-{node}"], capture_output=True, text=True, timeout=60
    ).stdout
    killed = []
    for pid in map(int, listed.split()):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in ("slurmd", "slurmstepd"):
            continue
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            continue
        killed.append(f"{pid}:{name}")
    return killed


def test_a_lost_node_ends_the_job_and_a_resubmission_resumes_it(two_nodes, dataset, tmp_path):
    import torch

    data = (
        f"--dataset.train.src={dataset / 's2ef' / 'train'}",
        f"--dataset.val.src={dataset / 's2ef' / 'val'}",
        f"--timeout={COLLECTIVE_TIMEOUT_MIN}",
    )
    reference = tmp_path / "reference"
    job_id = submit("train", dataset, reference, *LOST_NODE_RUN, *data)
    finish(job_id, reference)
    expected = losses_by_step(reference / "run")
    [ref_checkpoint] = (reference / "run").glob("checkpoints/*/checkpoint.pt")
    last_checkpointed = torch.load(ref_checkpoint, map_location="cpu", weights_only=False)["step"]
    assert sorted(expected) == list(range(1, LAST_STEP + 1)) and last_checkpointed == LAST_STEP

    # The same job, until rank 0 has logged step 5 (the checkpoint of step 4 is written by then)
    lost = tmp_path / "lost"
    job_id = submit("train", dataset, lost, *LOST_NODE_RUN, *data)
    log0 = lost / "jobs" / job_id / f"{job_id}_0_log.out"
    deadline = time.monotonic() + 600
    while not any(step >= 5 for step in logged_steps(log0.read_text() if log0.exists() else "")):
        state = job_state(job_id)
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), f"job {job_id} {state} before step 5"
        assert time.monotonic() < deadline, "the job did not reach step 5"
        time.sleep(0.1)
    killed = kill_node_step("node2")
    lost_at = time.monotonic()
    assert killed, "no process of the job's step ran on node2"

    # it ends (ranks on node1 get an error from their collective, none hangs), not requeued
    limit = COLLECTIVE_TIMEOUT_MIN * 60 + 60
    while (state := job_state(job_id)) in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
        assert time.monotonic() - lost_at < limit, f"job {job_id} still {state} after {limit} s"
        time.sleep(0.2)
    ended_s = time.monotonic() - lost_at
    assert state in ("FAILED", "CANCELLED", "NODE_FAIL"), state
    names = set()
    for pid in cluster_processes():  # no rank left, on either node
        with contextlib.suppress(OSError):
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    assert names <= {"slurmd", "slurmctld", "munged", "slurmstepd"}, names
    log = log0.read_text(errors="replace")
    done = max(logged_steps(log))

    # the last checkpoint is whole and nothing half written is left beside it
    [checkpoint] = (lost / "run").glob("checkpoints/*/checkpoint.pt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert [p.name for p in checkpoint.parent.iterdir() if "partial" in p.name] == []
    assert not [p for p in (lost / "run").rglob("*") if p.name.startswith(".")]
    resumed_from = saved["step"]
    steps_lost = done - resumed_from
    assert resumed_from % 2 == 0 and 0 <= steps_lost <= 2 and resumed_from >= 4

    # what a user runs: the same command with --checkpoint; it continues from step resumed_from
    resumed = tmp_path / "resumed"
    job_id = submit(
        "train", dataset, resumed, *LOST_NODE_RUN, *data, "--checkpoint", str(checkpoint)
    )
    finish(job_id, resumed)
    after = losses_by_step(resumed / "run")
    assert sorted(after) == list(range(resumed_from + 1, LAST_STEP + 1))
    [final] = (resumed / "run").glob("checkpoints/*/checkpoint.pt")
    assert torch.load(final, map_location="cpu", weights_only=False)["step"] == LAST_STEP
    before = losses_by_step(lost / "run")
    assert set(range(1, resumed_from + 1)) <= set(before), sorted(before)
    losses = {**{s: v for s, v in before.items() if s <= resumed_from}, **after}
    assert sorted(losses) == sorted(expected)  # no step missing, none repeated
    steps = sorted(expected)
    # float32 rounding between runs, as in tests/launch/test_slurm.py; a step's data or optimizer state
    # off by one is far larger
    np.testing.assert_allclose([losses[s] for s in steps], [expected[s] for s in steps], rtol=1e-2)
    print(
        f"\nlost node: killed {killed} on node2 after step {done}; job {state} {ended_s:.1f} s "
        f"later; checkpoint of step {resumed_from}, steps lost {steps_lost}; resumed to step "
        f"{LAST_STEP}, losses equal to the uninterrupted run's (rtol 1e-2)"
    )
