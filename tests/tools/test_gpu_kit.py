"""The offline GPU kit (scripts/gpu_kit.sh fills it, `scripts/gpu_check.sh kit` installs and runs it,
docs/gpu_check.md gives the command), tested without compiling or downloading anything: the wheel
list, the documented command, dry runs of both scripts, and the check's real offline install of a
kit whose wheels are small stand-ins with the listed file names."""

from __future__ import annotations

import base64
import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
WHEEL_LIST = REPO / "scripts" / "gpu_kit" / "wheels.txt"
DEVICE_STACK = REPO / "scripts" / "gpu_kit" / "device_stack.txt"
DOC = REPO / "docs" / "gpu_check.md"
GPU_SUITE = REPO / "configs" / "bench" / "gpu.yml"
# The GPU machine: CPython 3.12 on x86-64 Linux, glibc new enough for manylinux_2_28.
PLATFORMS = [
    "linux_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
GPU_MACHINE_TAGS = set(cpython_tags((3, 12), ["cp312"], PLATFORMS)) | set(
    compatible_tags((3, 12), "cp312", PLATFORMS)
)
# What the GPU machine lacks, at the versions found to run there (wandb: 0.19.1, the project's
# pin, does not import with its protobuf 7).
PINNED = {
    "fairchem-core": "1.10.0",
    "ase": "3.23.0",
    "lmdb": "1.5.1",
    "submitit": "1.5.4",
    "pydantic": "2.10.3",
    "pydantic-core": "2.27.1",
    "annotated-types": "0.7.0",
    "pymatgen": "2024.11.13",
    "wandb": "0.31.0",
}
ALSO_NEEDED = {"monty", "ruamel-yaml", "opentelemetry-api", "platformdirs"}
NOT_THE_PROJECT_PIN = {"wandb"}
NEVER_CARRIED = {"torch", "numpy", "torch-geometric", "huggingface-hub"}


@dataclass(frozen=True)
class Entry:
    how: str
    spec: str  # as written, e.g. ruamel.yaml==0.18.6
    name: str  # canonical, e.g. ruamel-yaml
    version: str
    file: str
    module: str


def kit_entries() -> list[Entry]:
    entries = []
    for line in WHEEL_LIST.read_text().splitlines():
        fields = line.split("#")[0].split()
        if fields:
            how, spec, file, module = fields  # exactly four columns
            name, _, version = spec.partition("==")
            entries.append(Entry(how, spec, canonicalize_name(name), version, file, module))
    return entries


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_wheel_list_pins_every_wheel_for_the_gpu_machines_python():
    entries = kit_entries()
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names)), "one wheel per distribution"
    assert {entry.how for entry in entries} == {"download", "compile", "project"}
    for entry in entries:
        assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", entry.version), f"{entry.name} is not pinned"
        name, version, _, file_tags = parse_wheel_filename(entry.file)
        assert (name, version) == (entry.name, Version(entry.version)), entry.file
        assert file_tags & GPU_MACHINE_TAGS, f"{entry.file} does not install on CPython 3.12 x86-64"
        assert re.fullmatch(r"[A-Za-z_][\w.]*", entry.module)
    by_name = {entry.name: entry for entry in entries}
    for name, version in PINNED.items():
        assert by_name[name].version == version and by_name[name].how == "download"
    assert set(by_name) >= ALSO_NEEDED
    # the compiled ones: CPython 3.12 extensions, at the versions the project's setup builds
    compiled = {entry.name: entry for entry in entries if entry.how == "compile"}
    assert set(compiled) == {"torch-scatter", "torch-sparse"}
    pins = requirement_pins()
    for name, entry in compiled.items():
        assert entry.version == pins[name]
        assert entry.file.endswith("-cp312-cp312-linux_x86_64.whl")
    # the rest at the project's pins where it pins them, but for the documented exception
    for entry in entries:
        if entry.name in pins and entry.name not in NOT_THE_PROJECT_PIN:
            assert entry.version == pins[entry.name], entry.name
    (project,) = (entry for entry in entries if entry.how == "project")
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert project.name == "ocp-graphpar"
    assert project.version == setup["metadata"]["version"]


def test_wheel_list_carries_nothing_the_gpu_machine_has():
    stack = {}
    for line in DEVICE_STACK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            stack[canonicalize_name(requirement.name)] = requirement
    assert set(NEVER_CARRIED) <= set(stack)
    # the machine's torch, for which the kit's extensions are compiled
    assert str(stack["torch"].specifier) == "==2.11.0"
    carried = {entry.name for entry in kit_entries()}
    assert not carried & set(stack), "these would shadow the GPU machine's own builds"


def documented_command() -> str:
    """The fenced block that follows the marker comment in docs/gpu_check.md."""
    text = DOC.read_text()
    found = re.search(r"<!-- the GPU machine's command[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert found, "docs/gpu_check.md lost the GPU machine's command"
    return found.group(1).strip()


def test_documented_command_fits_the_gpu_machine():
    command = documented_command()
    assert 0 < len(command) <= 2000  # the device tool's limit
    assert "scripts/gpu_check.sh kit" in command
    for downloads in ("http", "pip download", "make setup", "pip install"):
        assert downloads not in command


# A kit whose wheels are stand-ins, one per listed file with the listed module in it, and the
# frames as empty files: what gpu_check.sh checks and installs, without the real wheels' bulk.
def stand_in_wheel(folder: Path, entry: Entry) -> Path:
    _, _, _, file_tags = parse_wheel_filename(entry.file)
    info = f"{entry.file.split('-')[0]}-{entry.version}.dist-info"
    parts = entry.module.split(".")
    files = {"/".join(parts[:i]) + "/__init__.py": "" for i in range(1, len(parts))}
    files["/".join(parts) + "/__init__.py"] = f"STAND_IN = {entry.file!r}\n"
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {entry.name}\nVersion: {entry.version}\n"
    )
    purelib = "true" if all(tag.abi == "none" for tag in file_tags) else "false"
    wheel_tags = "".join(f"Tag: {tag}\n" for tag in sorted(map(str, file_tags)))
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {purelib}\n{wheel_tags}"
    )
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / entry.file
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def suite_frames() -> set[str]:
    suite = yaml.safe_load(GPU_SUITE.read_text())
    return {Path(system).name for workload in suite["workloads"] for system in workload["systems"]}


@pytest.fixture(scope="module")
def stand_in_kit(tmp_path_factory) -> Path:
    kit = tmp_path_factory.mktemp("kit")
    (kit / "wheels").mkdir()
    (kit / "oc20_mini").mkdir()
    for entry in kit_entries():
        stand_in_wheel(kit / "wheels", entry)
    for frame in suite_frames():
        (kit / "oc20_mini" / frame).write_bytes(b"")
    sums = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(kit)}"
        for path in sorted(kit.rglob("*"))
        if path.is_file()
    ]
    (kit / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return kit


def run_script(command: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """A script run offline as far as pip can tell: any index it asked would be unreachable."""
    proxy = "http://127.0.0.1:9"
    environment = {
        **os.environ,
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "PY": sys.executable,
        "OUT": str(tmp_path / "out"),
        "TARGET": str(tmp_path / "target"),
        **env,
    }
    environment.pop("PYTHONPATH", None)
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )


def test_kit_script_dry_run_plans_every_stage_and_changes_nothing(tmp_path):
    kit, venv = tmp_path / "kit", tmp_path / "py312"
    env = {"GPU_KIT_DRY_RUN": "1", "GPU_KIT_VENV": str(venv)}
    done = run_script(["bash", "scripts/gpu_kit.sh", str(kit)], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert not kit.exists() and not venv.exists()
    planned = [line for line in done.stdout.splitlines() if "would run:" in line]
    (download,) = (line for line in planned if " -m pip download " in line)
    for option in (
        "--no-deps",
        "--only-binary=:all:",
        "--python-version 3.12",
        "--abi cp312",
        "--implementation cp",
        f"-d {kit}/wheels",
    ):
        assert option in download
    entries = kit_entries()
    specs = download.split(f"-d {kit}/wheels")[1].split()
    assert specs == [entry.spec for entry in entries if entry.how == "download"]
    assert any(" -m pip wheel --no-deps " in line for line in planned)  # the project's wheel
    (torch_install,) = (line for line in planned if " -m pip install " in line)
    assert "torch==2.11.0" in torch_install.split()
    compiles = [line for line in planned if "FORCE_ONLY_CUDA=1" in line]
    assert len(compiles) == 2
    for line, entry in zip(compiles, (e for e in entries if e.how == "compile")):
        assert "TORCH_CUDA_ARCH_LIST=9.0" in line and "--no-build-isolation" in line
        assert "/nvidia/cu13/include" in line.split("CUDA_INC_PATH=")[1].split()[0]
        assert line.endswith(f" {entry.spec}")
    copied = {line.split()[-1] for line in planned if " install -D " in line}
    assert copied == {str(kit / "oc20_mini" / frame) for frame in suite_frames()}

    done = run_script(["bash", "scripts/gpu_kit.sh", "--no-compile", str(kit)], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert "FORCE_ONLY_CUDA" not in done.stdout and "skipped (--no-compile)" in done.stdout


def test_documented_command_dry_run_installs_the_kit_offline_and_bounds_the_suite(
    stand_in_kit, tmp_path
):
    done = run_script(
        ["bash", "-c", documented_command()], tmp_path, KIT=str(stand_in_kit), GPU_CHECK_DRY_RUN="1"
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "target").exists() and not (tmp_path / "out").exists()
    planned = [line for line in done.stdout.splitlines() if "would run:" in line]
    (install,) = (line for line in planned if " -m pip install " in line)
    for option in ("--no-index", "--no-deps", f"--target {tmp_path / 'target'}"):
        assert option in install
    wheels = [word for word in install.split() if word.endswith(".whl")]
    assert wheels == [str(stand_in_kit / "wheels" / entry.file) for entry in kit_entries()]
    (bench,) = (line for line in planned if " bench " in line)
    assert re.search(r"\btimeout -k 20 480 \S+ -m ocp_graphpar\.cli bench ", bench)
    assert f"--suite {tmp_path / 'target'}/gpu.yml --out {tmp_path / 'out'}" in bench


@pytest.mark.slow
def test_check_installs_the_kit_offline_and_imports_each_module_from_it(stand_in_kit, tmp_path):
    target = tmp_path / "target"
    done = run_script(["bash", "scripts/gpu_check.sh", "install"], tmp_path, KIT=str(stand_in_kit))
    assert done.returncode == 0, done.stdout + done.stderr
    report = done.stdout
    for entry in kit_entries():
        assert (target / f"{entry.file.split('-')[0]}-{entry.version}.dist-info").is_dir()
        where = "the checkout" if entry.how == "project" else "the kit"
        assert f"  {entry.module} {entry.version} from {where}\n" in report
    # the machine's own packages are not shadowed: they come from this environment
    for name in ("torch", "numpy", "torch_geometric"):
        line = next(line for line in report.splitlines() if line.startswith(f"  {name} "))
        assert str(target) not in line
    assert f"PYTHONPATH={REPO}:{target}" in report
    # the stand-ins, not this environment's real packages, are what the check imported
    fairchem = target / "fairchem" / "core" / "__init__.py"
    assert "STAND_IN" in fairchem.read_text()


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_check_refuses_a_broken_kit_before_installing(stand_in_kit, tmp_path, damage):
    kit = tmp_path / "kit"
    shutil.copytree(stand_in_kit, kit)
    wandb = next((kit / "wheels").glob("wandb-*.whl"))
    if damage == "missing":
        wandb.unlink()
    else:
        wandb.write_bytes(wandb.read_bytes() + b"\0")
    done = run_script(["bash", "scripts/gpu_check.sh", "kit"], tmp_path, KIT=str(kit))
    assert done.returncode != 0
    assert (wandb.name if damage == "missing" else "SHA256SUMS") in done.stderr
    assert not (tmp_path / "target").exists()
