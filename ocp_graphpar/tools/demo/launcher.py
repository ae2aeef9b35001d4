"""Run the unmodified ``fairchem`` CLI as a child process: output streamed, no orphans.

fairchem's local launcher (torch elastic) starts one worker process per rank. The child is
started in a session and process group of its own, so that a Ctrl-C reaches only the demo (the
foreground group of the terminal) and the demo decides how its children stop: the whole group is
sent ``SIGTERM``, then ``SIGKILL`` if it has not exited after a grace period. Killing the workers
mid-step is safe: the configs' trainer writes checkpoints and result files atomically (see
:mod:`ocp_graphpar.trainers.atomic_outputs`), and the demo resumes from the last checkpoint.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ocp_graphpar.errors import UserFacingError

#: The repository root: configs are resolved against it, and fairchem runs in it.
REPO = Path(__file__).resolve().parents[3]
TERMINATE_GRACE_S = 10.0


def fairchem_executable() -> Path:
    """The ``fairchem`` script beside this interpreter (the virtual environment's)."""
    path = Path(sys.executable).with_name("fairchem")
    if not path.is_file():
        raise UserFacingError(
            f"fairchem not found at {path}: run `make setup` (it installs fairchem-core 1.10 "
            "into .venv), then run this command with .venv/bin/ocp-graphpar."
        )
    return path


def fairchem_command(
    mode: str,
    config: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    ranks: int = 2,
    gp_ranks: int = 2,
    timestamp_id: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    print_every: int | None = None,
) -> list[str]:
    """The ``fairchem`` command line of one run on CPU ranks: ``ranks`` in groups of
    ``gp_ranks`` graph-parallel ranks; ``overrides`` are ``--key.sub=value`` config options."""
    command = [
        str(fairchem_executable()),
        "--mode",
        mode,
        "--config-yml",
        str(config),
        "--cpu",
        "--num-gpus",
        str(ranks),
        "--gp-gpus",
        str(gp_ranks),
        "--run-dir",
        str(run_dir),
    ]
    if timestamp_id is not None:
        command += ["--timestamp-id", timestamp_id]
    if print_every is not None:
        command += ["--print-every", str(print_every)]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    return command + list(overrides)


def run_streamed(
    command: Sequence[str],
    log_file: str | os.PathLike | None = None,
    cwd: str | os.PathLike = REPO,
) -> None:
    """Run ``command``, copying its output (stdout and stderr, progress bars included) to our
    stdout and to ``log_file`` as it comes. Raises :class:`subprocess.CalledProcessError` if it
    fails; on any exception here (KeyboardInterrupt included) its process group is stopped first.
    """
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (closed below)
    if log is not None:
        log.write(f"\n$ {shlex.join(command)}\n".encode())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _copy_output(process, log)
        returncode = process.wait()
    except BaseException:
        stop_process_group(process)
        raise
    finally:
        if log is not None:
            log.close()
    if returncode != 0:
        stop_process_group(process)  # a rank may outlive a failed launcher
        raise subprocess.CalledProcessError(returncode, list(command))


def _copy_output(process: subprocess.Popen, log) -> None:
    """Copy the child's output in chunks, not lines, so ``\\r`` progress bars stay live."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    descriptor = process.stdout.fileno()
    while chunk := os.read(descriptor, 65536):
        if log is not None:
            log.write(chunk)
            log.flush()
        sys.stdout.write(decoder.decode(chunk))
        sys.stdout.flush()
    process.stdout.close()


def stop_process_group(process: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S) -> None:
    """Stop every process of ``process``'s group (it leads it): SIGTERM, then SIGKILL.

    A second Ctrl-C meanwhile is ignored, so it cannot cut the cleanup short and orphan ranks.
    """
    with _ignoring_interrupts():
        _stop_group(process, grace_s)


@contextlib.contextmanager
def _ignoring_interrupts():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    # The workers may outlive the launcher: kill whatever is left of the group in any case.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
