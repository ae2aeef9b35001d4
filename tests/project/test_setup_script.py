"""``scripts/setup_env.sh``'s checks and its plan (``SETUP_DRY_RUN=1``): no network, no installs.

The dry run prints each command that would change something (``setup: would run: ...``) for an
environment that does not exist yet, and creates nothing; the checks of ``CUDA=`` and of the CUDA
toolkit run for real, against a fake toolkit (an ``nvcc`` that only prints its version).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_PIN = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)


def setup_env(venv: Path, **env: str) -> subprocess.CompletedProcess:
    """Runs the script as a dry run; the CUDA settings of this shell are left out."""
    cuda_vars = ("CUDA", "CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST", "FORCE_ONLY_CPU")
    base = {k: v for k, v in os.environ.items() if k not in cuda_vars}
    base.update(PYTHON=sys.executable, VENV=str(venv), SETUP_DRY_RUN="1", **env)
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_env.sh")],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def planned(result: subprocess.CompletedProcess, what: str) -> list[str]:
    """The planned commands that mention ``what``."""
    return [line for line in result.stdout.splitlines() if "would run:" in line and what in line]


def fake_toolkit(where: Path, release: str) -> Path:
    (where / "bin").mkdir(parents=True)
    (where / "include").mkdir()
    (where / "include" / "cuda_runtime_api.h").touch()
    nvcc = where / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "Cuda compilation tools, release {release}, V{release}.1"\n')
    nvcc.chmod(0o755)
    return where


def test_default_plan_installs_the_pinned_cpu_torch(tmp_path):
    result = setup_env(tmp_path / "venv")
    assert result.returncode == 0, result.stderr
    (torch,) = planned(result, " torch==")
    assert torch.endswith(f" install torch=={TORCH_PIN}") and "--index-url" not in torch
    builds = planned(result, "--no-build-isolation -c")
    assert [b.split()[-1] for b in builds] == ["torch-scatter==2.1.2", "torch-sparse==0.6.18"]
    assert not any("FORCE_CUDA" in b or "--no-cache-dir" in b for b in builds)
    assert planned(result, "ocp_graphpar.launch.startup_hook")
    assert not (tmp_path / "venv").exists()


def test_cuda_plan_uses_the_pytorch_index_and_builds_the_kernels_with_cuda(tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-12.8", "12.8")
    result = setup_env(tmp_path / "venv", CUDA="cu128", CUDA_HOME=str(toolkit))
    assert result.returncode == 0, result.stderr
    (torch,) = planned(result, " torch==")
    assert torch.endswith(
        f" install --index-url https://download.pytorch.org/whl/cu128 torch=={TORCH_PIN}+cu128"
    )
    builds = planned(result, "--no-build-isolation -c")
    assert len(builds) == 2
    for build in builds:
        # pip's wheel cache may hold CPU-only builds of the default setup: not used here
        assert f"FORCE_CUDA=1 CUDA_HOME={toolkit} " in build and "--no-cache-dir" in build
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("value", ["bogus", "12.8", "cu12", "cu1280", "cpu"])
def test_a_cuda_value_that_is_no_wheel_index_is_refused_before_any_work(tmp_path, value):
    result = setup_env(tmp_path / "venv", CUDA=value)
    assert result.returncode != 0
    assert f"CUDA={value} is not a PyTorch CUDA wheel index such as cu126" in result.stderr
    assert "would run" not in result.stdout


def test_an_nvcc_of_another_major_version_is_refused_before_torch_is_downloaded(tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-13.0", "13.0")
    result = setup_env(tmp_path / "venv", CUDA="cu128", CUDA_HOME=str(toolkit))
    assert result.returncode != 0
    assert "is CUDA 13.0, torch's CUDA is 12.8: their major versions must match" in result.stderr
    assert "would run" not in result.stdout


def test_no_cuda_toolkit_is_refused_with_the_fix(tmp_path):
    result = setup_env(tmp_path / "venv", CUDA="cu126", CUDA_HOME=str(tmp_path))
    assert result.returncode != 0
    assert f"no CUDA toolkit (bin/nvcc and include/cuda_runtime_api.h) in: {tmp_path}." in (
        result.stderr
    )
    assert "set CUDA_HOME to it" in result.stderr


def test_cuda_for_an_environment_with_a_cpu_torch_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.version.cuda:
        pytest.skip("this environment's torch is a CUDA build")
    result = setup_env(Path(sys.prefix), CUDA="cu128")
    assert result.returncode != 0
    assert "a CPU build, which setup keeps. Remove that environment" in result.stderr
    assert "would run" not in result.stdout
