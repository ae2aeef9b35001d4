"""``ocp-graphpar bench --suite configs/bench/gpu.yml``, the GPU suite, run on CPU at tiny widths:
the same runner and measurement code the GPU runs; and the graph-parallel check on a device
(``scripts/gp_device_check.py``), run on CPU ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.oc20 import require_oc20_mini

from ocp_graphpar.cli import main
from ocp_graphpar.tools.bench import records

REPO = Path(__file__).resolve().parents[2]
GPU_SUITE = REPO / "configs" / "bench" / "gpu.yml"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    require_oc20_mini()
    out = tmp_path_factory.mktemp("gpu_suite")
    command = ["bench", "--suite", str(GPU_SUITE), "--device", "cpu", "--tiny", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # the suite's systems are relative to the repository root
        status = main(command)
    document = json.loads((out / "benchmarks_gpu" / "results.json").read_text())
    workloads, _ = records.organise([records.from_json(r) for r in document["results"]])
    return SimpleNamespace(
        status=status, out=out, workloads=workloads, environment=document["environment"]
    )


def test_gpu_suite_measures_every_contender_on_the_device(cpu_run):
    from ocp_graphpar.tools.bench.suite import load_suite

    suite = load_suite(GPU_SUITE).at_tiny_widths()
    assert cpu_run.status == 0
    runs = {
        (name, contender): run
        for name, results in cpu_run.workloads.items()
        for (contender, size), run in results.runs.items()
    }
    assert set(runs) == {(w.name, c) for w in suite.workloads for c in w.contenders}
    for workload in suite.workloads:
        ours, upstream = (runs[workload.name, c].per_rank[0] for c in workload.contenders)
        assert ours["memory"]["parameters"] == upstream["memory"]["parameters"]  # same weights
    for run in runs.values():
        (rank,) = run.per_rank  # each contender alone, at P = 1
        memory, stalls = rank["memory"], rank["stalls"]
        assert run.size == 1 and rank["device"] == "cpu"
        assert len(rank["step_s_all"]) == suite.tiny["repeats"]
        assert rank["systems"] == len(suite.workloads[0].systems) == suite.tiny["systems"]
        assert memory["activations"] > 0 and memory["parameters"] > 0
        # no GPU: the stall column is StallCounter's count of host-reading operators
        assert stalls["method"] == "StallCounter"
        assert (
            stalls["stalls"]
            == stalls["host_reading_ops"]
            == sum(stalls["host_reading_by_op"].values())
        )
        assert stalls["aten_ops"] > stalls["host_reading_ops"]


def test_gpu_suite_report_names_the_device_and_method(cpu_run):
    markdown = (cpu_run.out / "benchmarks_gpu.md").read_text()
    assert f"torch {torch.__version__}" in markdown
    assert "--device cpu" in cpu_run.environment["command"]
    for heading in ("## gemnet_xl", "## dimenetpp_xl"):
        assert heading in markdown
    for label in ("| ocp-graphpar |", "| upstream gemnet_t |", "| upstream dimenetplusplus |"):
        assert label in markdown
    assert "StallCounter" in markdown and "Structures/s" in markdown
    (cpu_run.out / "benchmarks_gpu.md").unlink()
    command = ["bench", "--suite", str(GPU_SUITE), "--out", str(cpu_run.out), "--report-only"]
    assert main(command) == 0
    assert (cpu_run.out / "benchmarks_gpu.md").read_text() == markdown


def test_gp_check_on_a_device_passes_on_cpu_ranks(tmp_path):
    """The check the GPU machine runs after the suite, on two CPU ranks at tiny widths."""
    require_oc20_mini()
    command = [sys.executable, "scripts/gp_device_check.py", "--device", "cpu", "--tiny"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    checks = {r["workload"]: r for r in json.loads((tmp_path / "gp_device_check.json").read_text())}
    assert set(checks) == {"gemnet_xl", "dimenetpp_xl"}
    for check in checks.values():
        first, second = check["per_rank"]
        errors = first["errors"]
        assert check["passed"] and check["size"] == 2
        assert max(errors["energy"], errors["forces"], errors["gradients"]) <= 1e-9
        assert errors["parameters"] > 10
        assert first["atoms"] > 0 and second["atoms"] > 0
        assert first["atoms"] + second["atoms"] == 71  # the first two systems
        assert sum(first["collectives"].values()) > 0
    assert "| pass (tolerance 1e-09) |" in (tmp_path / "gp_device_check.md").read_text()


def test_gpu_suite_file_and_device_errors(capsys):
    from ocp_graphpar.tools.bench.suite import load_suite

    suite = load_suite(GPU_SUITE)
    assert {w.device for w in suite.workloads} == {"cuda"} and suite.report == "benchmarks_gpu"
    assert all(w.tiny_overrides for w in suite.workloads)
    assert all(w.runs_at(2) == [] for w in suite.workloads)  # one device: P = 1 only
    if not torch.cuda.is_available():
        assert main(["bench", "--suite", str(GPU_SUITE), "--out", "unused"]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err
    command = ["bench", "--suite", str(GPU_SUITE), "--device", "nope", "--out", "unused"]
    assert main(command) == 2
    assert "device 'nope'" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_suite_measures_on_the_gpu(tmp_path):
    """On a machine with a GPU: one workload at tiny widths, timed by the device."""
    require_oc20_mini()
    command = ["bench", "--suite", str(GPU_SUITE), "--tiny", "--only", "gemnet_xl"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        assert main([*command, "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "benchmarks_gpu" / "results.json").read_text())
    runs = [r for r in document["results"] if r["kind"] == "run"]
    assert runs and all(r["per_rank"][0]["device"].startswith("cuda") for r in runs)
    assert all("max_memory_allocated" in r["per_rank"][0]["memory"] for r in runs)
