"""Spawn P worker ranks, with fairchem's GP/DP groups, and collect per-rank results.

A :class:`WorkerWorld` keeps its processes between calls, so its users (the ASE calculator,
tests, benchmarks, the demo) pay the start-up (a fresh interpreter importing torch and fairchem)
once. Ranks talk over gloo on CPU, or NCCL with one GPU each; a rank that dies mid-call stops
the world with an error naming it, rather than leaving its peers blocked in a collective.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.spawn as mp_spawn
import signal
import socket
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

_STOP = None


def free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RankDied(RuntimeError):
    """A worker process ended in the middle of a call (killed, or crashed in native code)."""

    def __init__(self, rank: int, exitcode: int | None):
        self.rank, self.exitcode = rank, exitcode
        if exitcode is not None and exitcode < 0:
            how = f"was killed by signal {-exitcode}"
            if -exitcode == signal.SIGKILL:
                how += " (on Linux usually the out-of-memory killer: see `dmesg`)"
        else:
            how = f"exited with code {exitcode}"
        super().__init__(f"rank {rank} {how} before answering; the world was stopped")


class RankFailed(RuntimeError):
    """A worker raised in the middle of a call; ``details`` holds its traceback."""

    def __init__(self, rank: int, details: str):
        self.rank, self.details = rank, details
        super().__init__(f"a worker rank failed:\n{details}")


class WorkerWorld:
    """``world_size`` ranks, reused across calls of :meth:`run`.

    Example::

        with WorkerWorld(4) as world:
            results = world.run(my_function, arg, gp_size=2)   # one result per rank

    Args:
        world_size: ranks to spawn.
        threads_per_rank: torch's intra-op threads in each rank.
        timeout_s: longest wait for a call's answers; ``None`` waits as long as every rank
            lives (a rank that dies is still reported at once).
        backend: ``"gloo"`` (CPU ranks) or ``"nccl"`` (rank ``r`` on GPU ``r``).
    """

    def __init__(
        self,
        world_size: int,
        *,
        threads_per_rank: int = 1,
        timeout_s: float | None = 300.0,
        backend: str = "gloo",
    ):
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.backend = backend
        context = mp.get_context("spawn")
        port = free_port()
        self._conns: list[Connection] = []
        self._procs = []
        with _main_module_not_rerun():
            for rank in range(world_size):
                parent, child = context.Pipe()
                proc = context.Process(
                    target=_serve,
                    args=(rank, world_size, port, threads_per_rank, backend, child),
                    daemon=True,
                )
                proc.start()
                self._conns.append(parent)
                self._procs.append(proc)

    def run(self, fn: Callable[..., Any], *args: Any, gp_size: int | None = None, **kwargs: Any):
        """Call ``fn(*args, **kwargs)`` on every rank, inside GP groups of ``gp_size`` ranks
        (default: the whole world), and return the per-rank results in rank order.

        ``fn`` must be importable by name (a module-level function) so it can be pickled.
        """
        if not self._procs:
            raise RuntimeError("this world's workers were stopped; start a new one")
        gp_size = gp_size or self.world_size
        for rank, conn in enumerate(self._conns):
            try:
                conn.send((fn, args, kwargs, gp_size))
            except (BrokenPipeError, ConnectionResetError):
                raise self._died(rank) from None
        results: dict[int, Any] = {}
        pending = dict(enumerate(self._conns))
        while pending:
            ready = wait(list(pending.values()), timeout=self.timeout_s)
            if not ready:
                self.close()
                raise TimeoutError(
                    f"ranks {sorted(pending)} gave no answer in {self.timeout_s:.0f} s"
                )
            for rank in [r for r, conn in pending.items() if conn in ready]:
                try:
                    status, payload = pending.pop(rank).recv()
                except (EOFError, ConnectionResetError):
                    raise self._died(rank) from None
                if status != "ok":
                    # The other ranks may be blocked in a collective the failed rank never
                    # reached: stop the world rather than wait for them.
                    self.close(force=True)
                    raise RankFailed(rank, payload)
                results[rank] = payload
        return [results[rank] for rank in range(self.world_size)]

    def _died(self, rank: int) -> RankDied:
        """Stop the world after ``rank``'s process ended without answering."""
        proc = self._procs[rank]
        proc.join(timeout=5)
        code = proc.exitcode
        self.close(force=True)
        return RankDied(rank, code)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, by rank."""
        return [proc.pid for proc in self._procs]

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(proc.is_alive() for proc in self._procs)

    def close(self, force: bool = False) -> None:
        """Stop the workers (``force``: kill them at once)."""
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(_STOP)
        for proc in self._procs:
            proc.join(timeout=0 if force else 10)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []

    def __enter__(self) -> WorkerWorld:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _main_module_not_rerun() -> Iterator[None]:
    """Start processes without importing the caller's ``__main__`` in them.

    A spawned process normally runs the parent's main script again, so a script that starts a
    world outside ``if __name__ == "__main__":`` (the calculator's usual example) would start
    it again in every worker. Workers only run module-level functions of importable modules,
    so they need nothing from ``__main__``; ``sys.path`` still travels with them.
    """
    prepare = mp_spawn.get_preparation_data

    def without_main(name: str) -> dict:
        data = prepare(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    mp_spawn.get_preparation_data = without_main
    try:
        yield
    finally:
        mp_spawn.get_preparation_data = prepare


def _serve(
    rank: int, world_size: int, port: int, threads: int, backend: str, conn: Connection
) -> None:
    import torch
    import torch.distributed as dist

    from ocp_graphpar.parallel.groups import setup_groups, teardown_groups

    # Ctrl-C in a terminal reaches the whole process group: the parent decides what it means
    # and stops the workers, which would otherwise die mid-call and be reported as failures.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    device = None
    if backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        device_id=device,
    )
    current_gp = None
    try:
        while (message := conn.recv()) is not _STOP:
            fn, args, kwargs, gp_size = message
            try:
                if gp_size != current_gp:
                    setup_groups(gp_size, backend=backend)
                    current_gp = gp_size
                conn.send(("ok", fn(*args, **kwargs)))
            except Exception:
                conn.send(("error", f"rank {rank}:\n{traceback.format_exc()}"))
    finally:
        teardown_groups()
        dist.destroy_process_group()
