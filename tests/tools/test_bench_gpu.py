"""``ocp-graphpar bench --suite configs/bench/gpu.yml``, the GPU suite, run on CPU at tiny widths:
the same measurement and graph-parallel check code the GPU runs, with host staging forced."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from helpers.oc20 import require_oc20_mini

from ocp_graphpar.cli import main
from ocp_graphpar.tools.bench.staging import (
    COLLECTIVES,
    probe_collective,
    refused_collectives,
    staged,
)

REPO = Path(__file__).resolve().parents[2]
GPU_SUITE = REPO / "configs" / "bench" / "gpu.yml"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    require_oc20_mini()
    out = tmp_path_factory.mktemp("gpu_suite")
    command = [
        "bench",
        "--suite",
        str(GPU_SUITE),
        "--device",
        "cpu",
        "--tiny",
        "--stage",
        "all",
        "--out",
        str(out),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # the suite's systems are relative to the repository root
        status = main(command)
    document = json.loads((out / "benchmarks_cpu.json").read_text())
    return SimpleNamespace(
        status=status, out=out, results=document["results"], environment=document["environment"]
    )


def _records(run, kind: str) -> list[dict]:
    return [record for record in run.results if record["kind"] == kind]


def test_gpu_suite_measures_every_contender_on_the_device(cpu_run):
    from ocp_graphpar.tools.bench.suite import load_suite

    suite = load_suite(GPU_SUITE).at_tiny_widths()
    assert cpu_run.status == 0
    runs = {(r["workload"], r["contender"]): r for r in _records(cpu_run, "device_run")}
    assert set(runs) == {(w.name, c) for w in suite.workloads for c in w.contenders}
    for workload in suite.workloads:
        ours, upstream = (runs[workload.name, c] for c in workload.contenders)
        assert ours["parameters"] == upstream["parameters"]  # the same weights
    for run in runs.values():
        timing, memory, stalls = run["timing"], run["memory"], run["stalls"]
        assert run["device"] == "cpu" and timing["method"] == "time.perf_counter"
        assert len(timing["step_s_all"]) == run["steps"] == suite.timing["steps"]
        assert run["structures_per_s"] == pytest.approx(run["systems"] / timing["step_s"])
        assert run["systems"] == len(suite.workloads[0].systems) == suite.tiny["systems"]
        assert memory["peak_bytes"] > memory["activation_bytes"] > 0
        # no GPU: the stall column is StallCounter's count of host-reading operators
        assert stalls["method"] == "StallCounter"
        assert (
            stalls["stalls"]
            == stalls["host_reading_ops"]
            == sum(stalls["host_reading_by_op"].values())
        )
        assert stalls["aten_ops"] > stalls["host_reading_ops"]


def test_gpu_suite_graph_parallel_check_passes_with_every_collective_staged(cpu_run):
    checks = {check["workload"]: check for check in _records(cpu_run, "gp_check")}
    assert set(checks) == {"gemnet_xl", "dimenetpp_xl"}
    for check in checks.values():
        assert check["passed"] and check["size"] == 2 and check["systems"] == 2
        first, second = check["per_rank"]
        errors = first["errors"]
        assert max(errors["energy"], errors["forces"], errors["gradients"]) <= 1e-9
        assert errors["parameters"] > 10
        assert first["atoms"] > 0 and second["atoms"] > 0
        assert first["atoms"] + second["atoms"] == 71  # the first two systems
        for rank in check["per_rank"]:
            assert rank["refused"] == {}  # gloo takes CPU tensors
            assert rank["staged"] == sorted(COLLECTIVES)  # --stage all
            issued = rank["collectives"]
            assert issued and sum(issued.values()) > 0
            # every collective the step issued went through the host staging
            for name, calls in issued.items():
                assert rank["staged_calls"].get(name) == calls, name


def test_gpu_suite_report_names_device_method_and_staging(cpu_run):
    markdown = (cpu_run.out / "benchmarks_cpu.md").read_text()
    assert cpu_run.environment["torch"] == torch.__version__
    assert f"torch {torch.__version__}" in markdown
    for heading in ("## gemnet_xl", "## dimenetpp_xl", "## Graph parallelism on one device"):
        assert heading in markdown
    for label in ("| ocp-graphpar |", "| upstream gemnet_t |", "| upstream dimenetplusplus |"):
        assert label in markdown
    assert "StallCounter" in markdown and "time.perf_counter" in markdown
    assert "Gloo accepted every collective" in markdown
    assert "Staged on request although gloo accepts them here" in markdown
    assert markdown.count("| pass (tolerance 1e-09) |") == 2
    (cpu_run.out / "benchmarks_cpu.md").unlink()
    command = [
        "bench",
        "--suite",
        str(GPU_SUITE),
        "--device",
        "cpu",
        "--out",
        str(cpu_run.out),
        "--report-only",
    ]
    assert main(command) == 0
    assert (cpu_run.out / "benchmarks_cpu.md").read_text() == markdown


def staging_round(name: str) -> dict:
    """On every rank: collective ``name`` with known values through the host staging, plain,
    and asynchronously through the staging."""
    call, correct = probe_collective(name, torch.device("cpu"), None)
    with staged([name]) as calls:
        call()
    staged_ok, staged_calls = correct(), calls[name]
    call, correct = probe_collective(name, torch.device("cpu"), None)
    call()
    tensor = torch.ones(3)
    with staged(["all_reduce"]):
        dist.all_reduce(tensor, async_op=True).wait()
    return {
        "staged": staged_ok,
        "calls": staged_calls,
        "plain": correct(),
        "async": tensor.tolist(),
        "restored": dist.all_reduce.__name__,
    }


@pytest.mark.parametrize("name", COLLECTIVES)
def test_staging_through_host_memory_gives_the_backends_result(gloo_world, name):
    for result in gloo_world(2).run(staging_round, name):
        assert result == {
            "staged": True,
            "calls": 1,
            "plain": True,
            "async": [2.0, 2.0, 2.0],
            "restored": "all_reduce",
        }


def probe_with_a_refusing_collective() -> tuple[dict, dict, dict]:
    """The probe's answer on CPU, and with ``all_gather_into_tensor`` broken: returning without
    a result on rank 0, refusing its tensors on rank 1 (every rank learns of both)."""
    plain = refused_collectives("cpu")
    original = dist.all_gather_into_tensor

    def refuses(*args, **kwargs):
        raise RuntimeError("ProcessGroupGloo::allgather: unsupported device type cpu\nmore")

    dist.all_gather_into_tensor = refuses if dist.get_rank() == 1 else lambda *a, **k: None
    try:
        broken = refused_collectives("cpu", names=["all_reduce", "all_gather_into_tensor"])
        dist.all_gather_into_tensor = refuses
        refused = refused_collectives("cpu", names=["all_gather_into_tensor"])
    finally:
        dist.all_gather_into_tensor = original
    return plain, broken, refused


def test_probe_names_the_collectives_gloo_refuses(gloo_world):
    for plain, broken, refused in gloo_world(2).run(probe_with_a_refusing_collective):
        assert plain == {}
        assert broken == {"all_gather_into_tensor": "returned wrong values"}
        assert refused == {
            "all_gather_into_tensor": "ProcessGroupGloo::allgather: unsupported device type cpu"
        }


def test_gpu_suite_file_and_device_errors(capsys):
    from ocp_graphpar.tools.bench.suite import load_suite

    suite = load_suite(GPU_SUITE)
    assert suite.device == "cuda"
    assert set(suite.gp_check["workloads"]) == {w.name for w in suite.workloads}
    assert all(w.tiny_overrides for w in suite.workloads)
    if not torch.cuda.is_available():
        assert main(["bench", "--suite", str(GPU_SUITE), "--out", "unused"]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err
    default = str(REPO / "configs" / "bench" / "default.yml")
    assert main(["bench", "--suite", default, "--stage", "all", "--out", "unused"]) == 2
    assert "--stage applies to device suites" in capsys.readouterr().err
    command = ["bench", "--suite", str(GPU_SUITE), "--device", "cpu", "--stage", "nope"]
    assert main([*command, "--out", "unused"]) == 2
    assert "choose from" in capsys.readouterr().err


def runs_out_of_memory() -> None:
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_run_that_fails_is_reported_and_the_suite_goes_on():
    from ocp_graphpar.tools.bench.device_report import render_device_markdown
    from ocp_graphpar.tools.bench.device_suite import run_in_world

    key = {"workload": "gemnet_xl", "contender": "gemnet_t"}
    assert run_in_world(1, key, runs_out_of_memory) is None
    assert key["kind"] == "failed"
    assert key["reason"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    environment = {"command": "c", "device": "cuda", "device_name": "GPU", "torch": "t"}
    markdown = render_device_markdown([key], environment)
    assert "* gemnet_xl gemnet_t: RuntimeError: CUDA out of memory" in markdown
