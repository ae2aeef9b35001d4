"""``ocp-graphpar demo``: the whole job, stage by stage, resumable.

Stages, in order (data flows one way, each from the records of the ones before it):

1. data     the embedded EMT demo set, or LMDBs from ASE trajectories (``--data``)
2. train    GemNet-XL (demo widths) through ``fairchem --mode train``, 2 CPU ranks, gp 2
3. predict  S2EF predictions on the validation frames (``--mode predict``)
4. relax    IS2RS relaxations of the validation systems (``--mode run-relaxations``)
5. export   ``s2ef_submission.npz`` and ``is2rs_submission.npz``, validated
6. measure  bytes through collectives, memory and load per rank of one gp-2 training step
7. summary  ``summary.md``, ``summary.json`` and ``learning_curves.png``

A stage whose record matches its inputs is skipped; training resumes from its last checkpoint
when it was interrupted with the same inputs; any stage whose inputs changed (other data, an
edited config) runs again from scratch, and so does everything after it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ocp_graphpar.atomic import fingerprint
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.demo import stages
from ocp_graphpar.tools.demo.options import DemoOptions, DemoPaths, command_line
from ocp_graphpar.tools.demo.state import STATE_DIR, StageState

STAGES = {
    "data": "dataset",
    "train": "train GemNet-XL (demo widths), gp 2 on 2 CPU ranks",
    "predict": "S2EF predictions on the validation frames",
    "relax": "IS2RS relaxations of the validation systems",
    "export": "leaderboard files, validated",
    "measure": "communication and memory of one gp-2 training step",
    "summary": "summary",
}


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@dataclass
class StageRunner:
    """Runs stages in order: banners with elapsed time, skips, records, resumption."""

    options: DemoOptions
    paths: DemoPaths
    started: float = field(default_factory=time.monotonic)
    current: str | None = None
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def state(self) -> StageState:
        return StageState(self.paths.out)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def banner(self, name: str, note: str = "") -> None:
        number = list(STAGES).index(name) + 1
        line = f"[stage {number}/{len(STAGES)}] {name}: {STAGES[name]}"
        rule = "=" * 100
        print(f"\n{rule}\n{line}{note}   (elapsed {_clock(self.elapsed())})\n{rule}", flush=True)

    def run(
        self, name: str, inputs: dict, make: Callable[..., dict], *, resumable: bool = False
    ) -> tuple[str, dict]:
        """Run stage ``name`` unless its record matches ``inputs``; return (fingerprint, outputs).

        ``make()`` builds the outputs; a ``resumable`` stage gets ``resume=True`` when an
        unfinished attempt with the same inputs left its folder behind.
        """
        self.current = name
        key = fingerprint(inputs)
        record = self.state.completed(name, key)
        if record is not None:
            self.banner(name, f" -- already complete ({record['finished']}), skipped")
            self.records[name] = record
            return key, record["outputs"]
        resume = resumable and self.state.started_with(name, key)
        self.banner(name, " -- resuming an interrupted run" if resume else "")
        if not resume:
            self.state.forget(name)
            self.state.mark_started(name, inputs)
        began = time.monotonic()
        outputs = make(resume=resume) if resumable else make()
        self.records[name] = self.state.mark_complete(
            name, inputs, outputs, time.monotonic() - began
        )
        print(f"{name}: done in {_clock(time.monotonic() - began)}", flush=True)
        return key, outputs


def check_out_folder(paths: DemoPaths) -> None:
    """Refuse an ``--out`` that holds something other than a demo (``--restart`` deletes)."""
    out = paths.out
    if out.exists() and not out.is_dir():
        raise UserFacingError(f"--out {out} is a file; choose a folder for the demo.")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_DIR).is_dir():
        raise UserFacingError(
            f"--out {out} is not empty and holds no demo ({STATE_DIR}/ missing); the demo "
            "writes and deletes files there. Choose a new or empty folder."
        )


def restart(paths: DemoPaths) -> None:
    """Delete everything an earlier demo wrote in the folder (and nothing else)."""
    for path in paths.owned():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_stages(runner: StageRunner) -> dict:
    """Stages 1-7; returns the summary dict."""
    from ocp_graphpar.tools.demo.summary import build_summary, write_summary

    options, paths = runner.options, runner.paths
    data_key, data = runner.run(
        "data", stages.data_inputs(options), lambda: stages.build_data(options, paths)
    )
    train_key, trained = runner.run(
        "train",
        stages.train_inputs(options, data_key),
        lambda resume: stages.train(options, paths, data, resume),
        resumable=True,
    )
    predict_key, predicted = runner.run(
        "predict", stages.predict_inputs(train_key), lambda: stages.predict(paths, trained)
    )
    relax_key, relaxed = runner.run(
        "relax",
        stages.relax_inputs(options, train_key),
        lambda: stages.relax(options, paths, trained),
    )
    runner.run(
        "export",
        stages.export_inputs(predict_key, relax_key),
        lambda: stages.export(paths, predicted, relaxed),
    )
    runner.run(
        "measure", stages.measure_inputs(options, data_key), lambda: stages.measure(options, paths)
    )
    runner.current = "summary"
    runner.banner("summary")
    summary = build_summary(paths, runner.records, runner.elapsed())
    print(write_summary(paths, summary))
    print(f"summary: {paths.summary_md} and {paths.summary_json}")
    print(f"demo complete in {_clock(runner.elapsed())}", flush=True)
    return summary


def run_demo(options: DemoOptions) -> dict:
    """The demo end to end in ``options.out``; returns the summary. Raises
    ``KeyboardInterrupt`` or the failing stage's error after saying how to resume."""
    paths = DemoPaths(options.out.expanduser().absolute())
    check_out_folder(paths)
    if options.restart:
        restart(paths)
    paths.out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(options, paths)
    try:
        return run_stages(runner)
    except KeyboardInterrupt:
        print(interrupted_message(runner, "interrupted"), file=sys.stderr, flush=True)
        raise
    except subprocess.CalledProcessError as error:
        log = paths.logs / f"{runner.current}.log"
        reason = f"failed: fairchem exited with status {error.returncode} (log: {log})"
        print(interrupted_message(runner, reason), file=sys.stderr, flush=True)
        raise


def interrupted_message(runner: StageRunner, reason: str) -> str:
    """What happened, what is kept, and the command that continues."""
    name = runner.current or "data"
    done = [stage for stage in runner.records if stage != name]
    lines = [
        "",
        f"Stage {list(STAGES).index(name) + 1}/{len(STAGES)} ({name}) {reason} after "
        f"{_clock(runner.elapsed())}.",
        f"Finished stages are kept in {runner.paths.out}: {', '.join(done) or 'none yet'}.",
    ]
    if name == "train" and runner.paths.checkpoint.is_file():
        step = stages.checkpoint_step(runner.paths.checkpoint)
        lines.append(f"Training resumes from its last checkpoint (step {step}).")
    lines.append(
        "To continue, run the same command again (`make demo` with the same DATA, or "
        f"`{command_line(runner.options)}`); add --restart (RESTART=1 with make) to start over."
    )
    return "\n".join(lines)
