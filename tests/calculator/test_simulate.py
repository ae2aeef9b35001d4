"""Tests of ``ocp-graphpar relax`` and ``ocp-graphpar md``: runs with a small random checkpoint
over graph-parallel CPU ranks, atomic trajectories, resuming after SIGKILL and Ctrl-C, refusals.

Resuming and interruption are also checked with ASE's EMT in place of the workers (the loops
take any ASE calculator), where a resumed run must match an uninterrupted one to rounding.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from helpers.calculator_cases import slab, write_checkpoint

from ocp_graphpar.cli import main
from ocp_graphpar.tools.simulate import session, trajectory
from ocp_graphpar.tools.simulate.trajectory import RECORD_KEY, FrameWriter

REPO = Path(__file__).resolve().parents[2]
#: The NVE run at gp 2 on CPU, uninterrupted and killed: long enough to be killed part-way.
MD_STEPS, MD_INTERVAL = 300, 20
MD_FRAMES = MD_STEPS // MD_INTERVAL + 1


def _frames(path: Path) -> list:
    return ase.io.read(path, index=":")


def _steps(path: Path) -> list[int]:
    return [frame.info[RECORD_KEY]["step"] for frame in _frames(path)]


def _fixed(atoms) -> np.ndarray:
    (constraint,) = [c for c in atoms.constraints if isinstance(c, FixAtoms)]
    return constraint.get_indices()


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)``'s status, stdout and stderr (also where no capsys fixture is at hand)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A small PaiNN checkpoint and a 29-atom Cu(111) + CO slab with its lower layers fixed."""
    folder = tmp_path_factory.mktemp("simulate")
    structure = folder / "slab.traj"
    ase.io.write(structure, slab((3, 3, 3)))
    return {"checkpoint": write_checkpoint(folder / "c.pt", "painn"), "structure": structure}


def _model_args(command: str, files: dict[str, Path], out: Path, options: str) -> list[str]:
    """``command`` with the module's checkpoint and structure, ``--out out`` and ``options``."""
    inputs = ["--checkpoint", str(files["checkpoint"]), "--structure", str(files["structure"])]
    return [command, *inputs, "--out", str(out), *options.split()]


def _md_args(files: dict[str, Path], out: Path) -> list[str]:
    options = f"--gp 2 --cpu --steps {MD_STEPS} --interval {MD_INTERVAL} --temperature 300"
    return _model_args("md", files, out, options + " --timestep 1 --ensemble nve")


@pytest.fixture(scope="module")
def md_reference(files, tmp_path_factory) -> tuple[Path, str, str]:
    """An uninterrupted NVE run at ``--gp 2 --cpu``: its trajectory, stdout and stderr."""
    out = tmp_path_factory.mktemp("reference") / "md.traj"
    status, stdout, stderr = _run(_md_args(files, out))
    assert status == 0, stderr[-3000:]
    return out, stdout, stderr


# --- with the checkpoint's model over worker processes ---------------------------------------


@pytest.mark.slow
def test_relax_keeps_fixed_atoms_fixed_and_lowers_fmax(files, tmp_path):
    out = tmp_path / "relax.traj"
    status, stdout, stderr = _run(_model_args("relax", files, out, "--cpu --steps 8"))
    assert status == 0, stderr[-3000:]
    frames = _frames(out)
    assert _steps(out) == list(range(len(frames)))
    start = ase.io.read(files["structure"])
    fixed = _fixed(start)
    assert len(fixed) > 0 and np.array_equal(_fixed(frames[-1]), fixed)
    for frame in frames:
        np.testing.assert_array_equal(frame.positions[fixed], start.positions[fixed])
    assert not np.allclose(frames[-1].positions, start.positions)
    fmax = [np.linalg.norm(f.get_forces(), axis=1).max() for f in frames]
    assert fmax[-1] < fmax[0]
    assert "fmax=" in stderr and "eV/A" in stderr  # the progress bar's postfix
    assert "relax:" in stdout and "final energy" in stdout and "s/step" in stdout
    assert str(out) in stdout


@pytest.mark.slow
def test_md_at_gp2_writes_a_frame_every_interval(md_reference):
    out, stdout, stderr = md_reference
    assert _steps(out) == list(range(0, MD_STEPS + 1, MD_INTERVAL))
    frames = _frames(out)
    assert frames[0].get_momenta().any() and np.isfinite(frames[-1].positions).all()
    assert "T=" in stderr and f"{MD_STEPS}/{MD_STEPS}" in stderr
    assert "mean temperature" in stdout and f"({MD_FRAMES} frames)" in stdout


@pytest.mark.slow
def test_md_killed_then_resumed_ends_where_an_uninterrupted_run_ends(files, md_reference, tmp_path):
    out, log = tmp_path / "md.traj", tmp_path / "md.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "ocp_graphpar.cli", *_md_args(files, out)],
            cwd=REPO,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while len(_readable_frames(out)) < 3:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no frames after 5 minutes"
                time.sleep(0.02)
            process.kill()
            process.wait(timeout=60)
        finally:
            # The workers leave once their parent is gone; make sure of it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    killed_at = _steps(out)  # readable: every write replaced the file whole
    assert 3 <= len(killed_at) < MD_FRAMES, "the run ended before it was killed"

    status, stdout, stderr = _run(_md_args(files, out))
    assert status == 0, stderr[-3000:]
    assert f"resuming from {out}: {len(killed_at)} frames, last at step {killed_at[-1]}" in stdout
    assert f"steps {killed_at[-1]} -> {MD_STEPS}" in stdout
    assert _steps(out) == _steps(md_reference[0])
    assert not list(tmp_path.glob(".md.traj.*.tmp"))
    resumed, reference = _frames(out)[-1], _frames(md_reference[0])[-1]
    # Not bit for bit: the resumed run's GP partition is drawn at other positions, which
    # changes the order of floating-point sums across ranks.
    np.testing.assert_allclose(resumed.positions, reference.positions, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed.get_momenta(), reference.get_momenta(), rtol=0, atol=1e-5)


def _readable_frames(path: Path) -> list:
    try:
        return _frames(path)
    except FileNotFoundError:
        return []


# --- resuming, with EMT in place of the workers ----------------------------------------------


class _EMTStoppedByCtrlC(EMT):
    """EMT that raises KeyboardInterrupt at its ``stop_at``-th calculation, as Ctrl-C would."""

    def __init__(self, stop_at: int) -> None:
        super().__init__()
        self.calls, self.stop_at = 0, stop_at

    def calculate(self, *args, **kwargs) -> None:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        super().calculate(*args, **kwargs)


@pytest.fixture
def emt(monkeypatch) -> list:
    """Runs use EMT; append a calculator to the list to use it for the next run instead."""
    queued: list = []
    monkeypatch.setattr(
        session,
        "start_calculator",
        lambda args: contextlib.nullcontext(queued.pop(0) if queued else EMT()),
    )
    return queued


def _emt_args(command: str, structure: Path, out: Path, steps: int, *extra: str) -> list[str]:
    args = [command, "--checkpoint", str(structure), "--structure", str(structure)]
    return [*args, "--out", str(out), "--steps", str(steps), *extra]


@pytest.fixture
def structure(tmp_path) -> Path:
    path = tmp_path / "slab.traj"
    ase.io.write(path, slab((3, 3, 3)))
    return path


@pytest.mark.parametrize("ensemble", ["langevin", "nve"])
def test_md_resumed_matches_an_uninterrupted_run_exactly(emt, structure, tmp_path, ensemble):
    md = ["--temperature", "500", "--timestep", "2", "--ensemble", ensemble, "--interval", "3"]
    whole, parts = tmp_path / "whole.traj", tmp_path / "parts.traj"
    assert _run(_emt_args("md", structure, whole, 12, *md))[0] == 0
    assert _run(_emt_args("md", structure, parts, 7, *md))[0] == 0
    assert _steps(parts) == [0, 3, 6, 7]
    status, stdout, _ = _run(_emt_args("md", structure, parts, 12, *md))
    assert status == 0 and "last at step 7" in stdout
    assert _steps(parts) == [0, 3, 6, 7, 9, 12]
    end, expected = _frames(parts)[-1], _frames(whole)[-1]
    # To rounding: EMT's neighbour list, built at other positions, sums in another order. A
    # Langevin run that drew new random forces would be off by far more.
    np.testing.assert_allclose(end.positions, expected.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(end.get_momenta(), expected.get_momenta(), rtol=0, atol=1e-12)


def test_ctrl_c_leaves_a_trajectory_that_resumes(emt, structure, tmp_path, capsys):
    md = ["--temperature", "300", "--timestep", "1"]
    whole, out = tmp_path / "whole.traj", tmp_path / "md.traj"
    assert _run(_emt_args("md", structure, whole, 10, *md))[0] == 0
    emt.append(_EMTStoppedByCtrlC(stop_at=6))
    assert main(_emt_args("md", structure, out, 10, *md)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _steps(out) == [0, 1, 2, 3, 4]
    assert main(_emt_args("md", structure, out, 10, *md)) == 0
    assert _steps(out) == list(range(11))
    np.testing.assert_allclose(
        _frames(out)[-1].positions, _frames(whole)[-1].positions, rtol=0, atol=1e-12
    )


def test_relax_resumes_and_stops_once_converged(emt, structure, tmp_path, capsys):
    out = tmp_path / "relax.traj"
    relax = ("--fmax", "0.1", "--optimizer", "FIRE")
    assert main(_emt_args("relax", structure, out, 3, *relax)) == 0
    assert _steps(out) == [0, 1, 2, 3]
    assert main(_emt_args("relax", structure, out, 400, *relax)) == 0
    assert "resuming from" in capsys.readouterr().out
    last = _frames(out)[-1]
    assert last.info[RECORD_KEY]["converged"] and last.info[RECORD_KEY]["fmax"] < 0.1
    emt.append(None)  # a third run must not start a calculator (None would fail it)
    assert main(_emt_args("relax", structure, out, 400, *relax)) == 0
    assert "already converged" in capsys.readouterr().out
    emt.clear()
    assert main(_emt_args("relax", structure, out, 400, "--fmax", "0.02")) == 0
    assert _frames(out)[-1].info[RECORD_KEY]["fmax"] < 0.02


def test_a_failed_write_leaves_the_trajectory_as_it_was(structure, tmp_path, monkeypatch):
    atoms = ase.io.read(structure)
    atoms.calc = EMT()
    out = tmp_path / "out.traj"
    writer = FrameWriter(out, command="md", interval=1)
    writer.write(atoms, step=0)
    before = out.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(trajectory, "replace_durably", fail)
    with pytest.raises(OSError, match="disk full"):
        writer.write(atoms, step=1)
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".out.traj.*"))


# --- refusals: before any worker starts ------------------------------------------------------


def _refusals(structure: Path, folder: Path) -> dict[str, tuple[list[str], str]]:
    """Each refused command line, and a phrase its message must hold."""
    garbage = folder / "garbage.xyz"
    garbage.write_text("not a structure\n")
    corrupt = folder / "corrupt.traj"
    corrupt.write_bytes(b"- of ULM")
    relaxed, foreign = folder / "relaxed.traj", folder / "foreign.traj"
    for command, atoms, path in (
        ("relax", ase.io.read(structure), relaxed),
        ("md", slab((2, 2, 3)), foreign),
    ):
        atoms.calc = EMT()
        FrameWriter(path, command=command, interval=1).write(atoms, step=0)

    def md(*extra: str, out: Path = folder / "md.traj", steps: int = 5) -> list[str]:
        return _emt_args(
            "md", structure, out, steps, "--temperature", "300", "--timestep", "1", *extra
        )

    relax = _emt_args("relax", structure, folder / "relax.traj", 5)
    return {
        "missing checkpoint": (md("--checkpoint", str(folder / "no.pt")), "does not exist"),
        "missing structure": (md("--structure", str(folder / "no.traj")), "does not exist"),
        "unreadable structure": (md("--structure", str(garbage)), "cannot read"),
        "gp below 1": (md("--gp", "0"), "--gp must be at least 1"),
        "gp above the atoms": (md("--gp", "64"), "more than the structure's"),
        "zero timestep": (md("--timestep", "0"), "--timestep must be positive"),
        "negative temperature": (md("--temperature", "-5"), "--temperature must be 0 or more"),
        "friction under nve": (md("--ensemble", "nve", "--friction", "0.1"), "--friction"),
        "no steps": (md(steps=0), "--steps must be at least 1"),
        "zero interval": (md("--interval", "0"), "--interval must be at least 1"),
        "negative skin": (md("--skin", "-1"), "--skin must be 0 or more"),
        "zero fmax": ([*relax, "--fmax", "0"], "--fmax must be a positive"),
        "out not a .traj": (md(out=folder / "md.xyz"), "ending in .traj"),
        "out of another structure": (md(out=foreign), "another structure"),
        "out of another command": (md(out=relaxed), "not of `md`"),
        "out is the input structure": (md(out=structure), "not written by"),
        "out is corrupt": (md(out=corrupt), "not a readable"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing checkpoint",
        "missing structure",
        "unreadable structure",
        "gp below 1",
        "gp above the atoms",
        "zero timestep",
        "negative temperature",
        "friction under nve",
        "no steps",
        "zero interval",
        "negative skin",
        "zero fmax",
        "out not a .traj",
        "out of another structure",
        "out of another command",
        "out is the input structure",
        "out is corrupt",
    ],
)
def test_bad_input_is_refused_before_any_worker_starts(
    case, structure, tmp_path, monkeypatch, capsys
):
    def no_workers(args):
        raise AssertionError("a calculator was started")

    monkeypatch.setattr(session, "start_calculator", no_workers)
    argv, message = _refusals(structure, tmp_path)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ocp-graphpar: error: ") and message in err, err
    assert "Traceback" not in err
