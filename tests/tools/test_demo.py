"""``ocp-graphpar demo`` (``make demo``): stages, records, resumption after Ctrl-C, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ocp_graphpar.atomic import fingerprint, write_atomic
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.demo import DemoOptions, DemoPaths, command_line
from ocp_graphpar.tools.demo.pipeline import StageRunner
from ocp_graphpar.tools.demo.schedule import training_schedule
from ocp_graphpar.tools.demo.splits import deal_by_system, leaderboard_file
from ocp_graphpar.tools.demo.state import StageState

REPO = Path(__file__).resolve().parents[2]
#: A tiny demo: 2 training systems (5 steps an epoch, 4 epochs), 4 validation systems (one per
#: split, 40 frames: within the demo's validation sample, so the last validation sees them all).
TINY = [
    "--systems",
    "6",
    "--emt-steps",
    "6",
    "--val-fraction",
    "0.67",
    "--md-frames",
    "2",
    "--rattled-frames",
    "1",
    "--steps",
    "20",
    "--evaluations",
    "2",
    "--relaxation-steps",
    "2",
]


# ----------------------------------------------------------------------------- fast


@pytest.mark.parametrize(
    ("frames", "steps", "evaluations"),
    [(482, 240, 4), (14, 16, 2), (560, 240, 4), (9, 7, 3), (960, 700, 4)],
)
def test_schedule_checkpoints_the_last_step(frames, steps, evaluations):
    schedule = training_schedule(frames, 4, steps, evaluations)
    assert schedule.steps_per_epoch == -(-frames // 4)
    assert schedule.total_steps == schedule.epochs * schedule.steps_per_epoch
    assert schedule.total_steps % schedule.checkpoint_every == 0  # final weights checkpointed
    assert schedule.checkpoint_every <= max(schedule.eval_every, 20)
    assert 0.5 * evaluations <= schedule.total_steps // schedule.eval_every <= 2 * evaluations
    assert 1 <= schedule.warmup_steps < schedule.total_steps // 10 + 2
    # fairchem refuses milestones below 100 (it reads them as epochs)
    assert all(100 <= m < schedule.total_steps for m in schedule.lr_milestones)
    assert list(schedule.lr_milestones) == sorted(set(schedule.lr_milestones))
    overrides = schedule.overrides()
    assert f"--optim.lr_milestones=[{','.join(map(str, schedule.lr_milestones))}]" in overrides


def test_the_demo_config_fits_its_normaliser():
    from ocp_graphpar.tools.demo.options import S2EF_CONFIG
    from ocp_graphpar.tools.demo.stages import resolved_config

    normalizer = resolved_config(S2EF_CONFIG)["dataset"]["train"]["transforms"]["normalizer"]
    # fairchem applies fixed values after a fit, so any beside it (say from an include) win
    assert set(normalizer) == {"fit"}
    assert normalizer["fit"]["targets"] == {"energy": {}, "forces": {"mean": 0.0}}


def test_records_are_atomic_and_keyed_by_inputs(tmp_path):
    state = StageState(tmp_path)
    inputs = {"data": ["a.traj"], "steps": 10}
    assert fingerprint(inputs) == fingerprint({"steps": 10, "data": ["a.traj"]})
    assert state.completed("train", fingerprint(inputs)) is None
    state.mark_started("train", inputs)
    assert state.started_with("train", fingerprint(inputs))
    assert not state.started_with("train", fingerprint({**inputs, "steps": 11}))
    state.mark_complete("train", inputs, {"checkpoint": "x.pt"}, seconds=1.0)
    assert state.completed("train", fingerprint(inputs))["outputs"] == {"checkpoint": "x.pt"}
    assert state.completed("train", fingerprint({**inputs, "steps": 11})) is None
    assert not state.started_with("train", fingerprint(inputs))  # cleared on completion
    assert sorted(p.name for p in state.folder.iterdir()) == ["train.json"]  # no temp files


def test_write_atomic_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = write_atomic(tmp_path / "summary.md", "old")

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_runner_skips_done_stages_and_reruns_changed_ones(tmp_path, capsys):
    runs = []

    def stage(name, inputs, resumable=False):
        runner = StageRunner(DemoOptions(out=tmp_path), DemoPaths(tmp_path))

        def make(resume=None):
            runs.append((name, resume))
            return {"value": inputs["x"]}

        return runner.run(name, inputs, make, resumable=resumable)

    key, out = stage("data", {"x": 1})
    assert out == {"value": 1} and stage("data", {"x": 1}) == (key, out)
    assert runs == [("data", None)]  # the second call was skipped
    assert "already complete" in capsys.readouterr().out
    stage("data", {"x": 2})  # e.g. another DATA: runs again
    assert runs[-1] == ("data", None)

    # An attempt that started from the same inputs and did not finish is resumed.
    StageState(tmp_path).mark_started("train", {"x": 3})
    stage("train", {"x": 3}, resumable=True)
    assert runs[-1] == ("train", True)
    StageState(tmp_path).mark_started("train", {"x": 4})
    stage("train", {"x": 5}, resumable=True)  # inputs changed meanwhile: from scratch
    assert runs[-1] == ("train", False)


def _predictions(systems: int, rows_per_system: int = 3) -> dict:
    ids = np.array([f"{100 + s}_{f}" for s in range(systems) for f in range(2)])
    rows = np.random.default_rng(0).normal(size=(len(ids) * rows_per_system, 3))
    return {
        "ids": ids,
        "energy": np.arange(len(ids), dtype=np.float32).reshape(-1, 1),
        "forces": rows.astype(np.float32),
        "chunk_idx": np.arange(rows_per_system, len(rows), rows_per_system),
    }


def test_leaderboard_file_from_one_split(tmp_path):
    from ocp_graphpar.tools.export import SPLITS, load_submission, validate_submission

    source = tmp_path / "ocp_predictions.npz"
    np.savez_compressed(source, **_predictions(systems=6))
    out = leaderboard_file("s2ef", source, tmp_path / "splits", tmp_path / "s2ef_submission.npz")
    assert validate_submission(out, "s2ef") == []
    arrays, _ = load_submission(out)
    sids = [{i.split("_")[0] for i in arrays[f"{split}_ids"]} for split in SPLITS]
    assert [len(s) for s in sids] == [2, 2, 1, 1]  # systems dealt out in turn
    assert set().union(*sids) == {str(100 + s) for s in range(6)}
    assert sum(len(arrays[f"{split}_forces"]) for split in SPLITS) == 36


def test_leaderboard_file_needs_a_system_per_split():
    with pytest.raises(UserFacingError, match="at least 4 validation systems"):
        deal_by_system(_predictions(systems=3), "s2ef")


def test_command_line_repeats_the_options():
    options = DemoOptions(out=Path("runs/d"), data=(Path("a.traj"),), steps=30, max_atoms=None)
    assert command_line(options) == (
        "ocp-graphpar demo --out runs/d --data a.traj --max-atoms 0 --steps 30"
    )


@pytest.mark.parametrize("problem", ["missing", "empty folder", "foreign out"])
def test_bad_input_is_named_with_its_fix(problem, tmp_path, capsys):
    from ocp_graphpar.cli import main

    out, data = tmp_path / "out", tmp_path / "trajectories"
    if problem == "empty folder":
        data.mkdir()
    if problem == "foreign out":
        out.mkdir()
        (out / "thesis.tex").write_text("keep me")
    assert main(["demo", "--out", str(out), "--data", str(data)]) == 2
    error = capsys.readouterr().err
    expected = {
        "missing": "does not exist",
        "empty folder": "holds no *.traj files",
        "foreign out": "Choose a new or empty folder",
    }[problem]
    assert expected in error
    assert problem != "foreign out" or (out / "thesis.tex").read_text() == "keep me"


# ----------------------------------------------------------------------------- end to end


def _demo_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "ocp_graphpar.cli", "demo", "--out", str(out), *TINY]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in command:
                found.append(f"{proc.name}: {command}")
    return found


def _as_in_a_terminal() -> None:
    """The demo as a terminal's foreground job: its own process group, Ctrl-C not ignored
    (a background runner, e.g. ``cmd &`` in a script, would pass SIGINT on as ignored)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_during_training(out: Path, log: Path) -> subprocess.CompletedProcess:
    """Start the demo, press Ctrl-C (SIGINT) once training has written a checkpoint."""
    paths = DemoPaths(out)
    with open(log, "w") as stream:
        process = subprocess.Popen(
            _demo_command(out),
            cwd=REPO,
            stdout=stream,
            stderr=subprocess.STDOUT,
            preexec_fn=_as_in_a_terminal,
        )
        try:
            deadline = time.monotonic() + 900
            while not paths.checkpoint.is_file():
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint after 15 minutes"
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=120)
        finally:
            if process.poll() is None:  # stop it the way that also stops its fairchem ranks
                process.terminate()
                process.wait(timeout=60)
    return subprocess.CompletedProcess(process.args, returncode, log.read_text())


def _run(out: Path) -> str:
    done = subprocess.run(_demo_command(out), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """The tiny demo interrupted during training, then run again to the end."""
    out = tmp_path_factory.mktemp("demo") / "run"
    interrupted = _interrupt_during_training(out, out.parent / "interrupted.log")
    leftovers = _processes_mentioning(str(out))
    resumed_log = _run(out)
    return out, interrupted, leftovers, resumed_log


def _schedule(out: Path) -> dict:
    return StageState(out).record("train")["outputs"]["schedule"]


@pytest.mark.slow
def test_ctrl_c_stops_everything_and_says_how_to_resume(interrupted_then_resumed):
    out, interrupted, leftovers, _ = interrupted_then_resumed
    first = _schedule(out)["checkpoint_every"]
    assert interrupted.returncode == 130, interrupted.stdout[-3000:]
    assert "Stage 2/7 (train) interrupted" in interrupted.stdout
    assert f"Training resumes from its last checkpoint (step {first})" in interrupted.stdout
    assert "run the same command again" in interrupted.stdout
    assert leftovers == []  # no fairchem launcher or rank outlived the Ctrl-C


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_resumes_training(interrupted_then_resumed):
    out, _, _, log = interrupted_then_resumed
    from ocp_graphpar.tools.demo.stages import checkpoint_step
    from ocp_graphpar.tools.report import read_learning_curves

    schedule = _schedule(out)
    total, first = schedule["total_steps"], schedule["checkpoint_every"]
    assert first < total
    assert "[stage 1/7] data: dataset -- already complete" in log
    assert f"(step {first})" in log and "resuming an interrupted run" in log
    assert "Attemping to load user specified checkpoint" in log  # fairchem's spelling
    paths = DemoPaths(out)
    assert checkpoint_step(paths.checkpoint) == total
    curves = read_learning_curves(paths.train)
    steps, _ = curves["train/loss"]
    np.testing.assert_array_equal(steps, np.arange(1, total + 1))  # no step lost or repeated
    # fairchem checkpoints before it validates, so a validation cut short by the Ctrl-C is skipped.
    evaluated = curves["val/forces_mae"][0].tolist()
    assert set(evaluated) <= set(range(schedule["eval_every"], total + 1, schedule["eval_every"]))
    assert evaluated[-1] == total


@pytest.mark.slow
def test_outputs_validate_and_summary_has_numbers(interrupted_then_resumed):
    out, _, _, log = interrupted_then_resumed
    from ocp_graphpar.tools.export import validate_submission

    paths = DemoPaths(out)
    for task in ("s2ef", "is2rs"):
        assert validate_submission(paths.submission(task), task) == []
    summary = json.loads(paths.summary_json.read_text())
    s2ef = summary["s2ef"]
    for key in ("val_energy_mae_last", "val_forces_mae_last", "zero_force_mae"):
        assert np.isfinite(s2ef[key]) and s2ef[key] > 0
    final = s2ef["final_model_all_val_frames"]  # from the predictions; the last validation
    assert final["forces_mae"] == pytest.approx(s2ef["val_forces_mae_last"], rel=1e-4)
    assert final["energy_mae"] == pytest.approx(s2ef["val_energy_mae_last"], rel=1e-4)
    assert 0 <= summary["is2rs"]["is2rs_positions_average_distance_within_threshold"] <= 1
    step = summary["graph_parallel_step"]
    assert step["comm_bytes_total"] > 0 and len(step["per_rank"]) == 2
    for rank in step["per_rank"]:
        assert rank["atoms"] > 0 and rank["edges"] > 0 and rank["triplets"] > 0
        assert rank["parameters_bytes"] > 0 and rank["activations_bytes"] > 0
    assert summary["training"]["resumed_from_step"] == _schedule(out)["checkpoint_every"]
    assert paths.curves_png.read_bytes().startswith(b"\x89PNG")
    assert "## IS2RS" in paths.summary_md.read_text() and "average_distance_within_threshold" in log
    assert not list(out.rglob("*.partial*")) and not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_third_run_only_rewrites_the_summary(interrupted_then_resumed):
    out, *_ = interrupted_then_resumed
    log = _run(out)
    assert log.count("already complete") == 6
    assert "demo complete" in log
