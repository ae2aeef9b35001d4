"""Gloo and device tensors: which collectives the backend refuses, and staging those through
host memory.

The runtime's collectives (:mod:`ocp_graphpar.parallel.collectives`) call the
``torch.distributed`` functions in :data:`COLLECTIVES`. torch's ``ProcessGroupGloo.cpp``
(``torch/csrc/distributed/c10d/``) has a CUDA path for each of them: ``allreduce``,
``allgather`` (which ``_allgather_base``, i.e. ``all_gather_into_tensor`` /
``all_gather_single``, calls) and ``alltoall_base`` (``all_to_all_single``, uneven splits too)
copy to pinned host memory, run on the host and copy back (their ``*CUDAWork`` classes);
``_reduce_scatter_base`` (``reduce_scatter_tensor`` / ``reduce_scatter_single``) is an
all-reduce of a clone, and the list ``reduce_scatter`` one all-reduce per rank since
pytorch/pytorch#149869 (March 2025), which also updated the docs' backend table to mark gloo's
GPU ``all_gather`` and ``reduce_scatter`` as supported (earlier tables predate those paths).
What gloo refuses on CUDA tensors the runtime never calls: ``allreduce_coalesced``
("unsupported device type"), the list ``all_to_all`` (no gloo implementation on any device),
``send``/``recv``.

Source code and tables age with every torch release, so :func:`refused_collectives` asks the
backend in use instead: it runs each collective once on small tensors of the device with known
values and names those that raise or return wrong values. :func:`staged` then routes only those
through host memory, for the duration of a block.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

#: The ``torch.distributed`` functions the graph-parallel runtime may issue, as far as this
#: torch has them (``all_gather_single`` and ``reduce_scatter_single`` are the newer names of
#: the into-tensor forms).
COLLECTIVES = tuple(
    name
    for name in (
        "all_to_all_single",
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_single",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "reduce_scatter_single",
        "all_reduce",
    )
    if hasattr(dist, name)
)

ROWS = 2  # rows per rank in the probes


def probe_collective(
    name: str, device: torch.device, group
) -> tuple[Callable[[], None], Callable[[], bool]]:
    """``(call, correct)``: one call of collective ``name`` on float64 tensors of ``device``
    whose result is known, and the check of that result."""
    rank, size = dist.get_rank(group=group), dist.get_world_size(group=group)

    def full(rows: int, value: float) -> torch.Tensor:
        return torch.full((rows, 3), float(value), dtype=torch.float64, device=device)

    # rank s sends rank q rows of value 10 s + q (reductions: each rank's sum over s)
    expected_sum = sum(10 * s + rank for s in range(size))
    if name == "all_reduce":
        tensor = full(ROWS, rank + 1)
        return (lambda: dist.all_reduce(tensor, group=group)), (
            lambda: bool((tensor == size * (size + 1) / 2).all())
        )
    if name == "all_gather":
        parts = [full(ROWS, -1) for _ in range(size)]
        return (lambda: dist.all_gather(parts, full(ROWS, rank), group=group)), (
            lambda: all(bool((part == q).all()) for q, part in enumerate(parts))
        )
    if name in ("all_gather_into_tensor", "all_gather_single"):
        out = full(size * ROWS, -1)
        return (lambda: getattr(dist, name)(out, full(ROWS, rank), group=group)), (
            lambda: all(bool((out[q * ROWS : (q + 1) * ROWS] == q).all()) for q in range(size))
        )
    if name == "reduce_scatter":
        out, parts = full(ROWS, -1), [full(ROWS, 10 * rank + q) for q in range(size)]
        return (lambda: dist.reduce_scatter(out, parts, group=group)), (
            lambda: bool((out == expected_sum).all())
        )
    if name in ("reduce_scatter_tensor", "reduce_scatter_single"):
        out = full(ROWS, -1)
        rows = torch.cat([full(ROWS, 10 * rank + q) for q in range(size)])
        return (lambda: getattr(dist, name)(out, rows, group=group)), (
            lambda: bool((out == expected_sum).all())
        )
    if name == "all_to_all_single":
        # uneven splits, as the halo exchange: q + 1 rows to rank q
        send = torch.cat([full(q + 1, 10 * rank + q) for q in range(size)])
        out = full(size * (rank + 1), -1)
        counts = ([rank + 1] * size, [q + 1 for q in range(size)])
        return (lambda: dist.all_to_all_single(out, send, *counts, group=group)), (
            lambda: all(
                bool((out[s * (rank + 1) : (s + 1) * (rank + 1)] == 10 * s + rank).all())
                for s in range(size)
            )
        )
    raise ValueError(f"no probe for {name!r}; known: {COLLECTIVES}")


def refused_collectives(
    device: torch.device | str, *, names: Iterable[str] = COLLECTIVES, group=None
) -> dict[str, str]:
    """``{collective: why}`` for the collectives the process group refuses (or gets wrong) on
    tensors of ``device``. Every rank of ``group`` must call it; all get the same answer."""
    device = torch.device(device)
    refused = {}
    for name in names:
        call, correct = probe_collective(name, device, group)
        try:
            call()
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
            refused[name] = str(error).strip().splitlines()[0]
            continue
        if not correct():
            refused[name] = "returned wrong values"
    answers: list[dict[str, str]] = [{} for _ in range(dist.get_world_size(group=group))]
    dist.all_gather_object(answers, refused, group=group)  # a refusal on any rank counts
    merged: dict[str, str] = {}
    for answer in answers:  # the lowest rank's reason
        for name, why in answer.items():
            merged.setdefault(name, why)
    return dict(sorted(merged.items()))


class _Done:
    """The finished work a staged ``async_op=True`` call returns (it ran synchronously)."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def _to_host(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return [_to_host(v) for v in value]
    return value


def _through_host(original: Callable, calls: Counter, name: str) -> Callable:
    """``original`` run on host copies of its tensors; the first argument, which every
    collective of :data:`COLLECTIVES` writes (an output, or the tensor reduced in place), is
    copied back."""
    signature = inspect.signature(original)
    written = next(iter(signature.parameters))

    def staged_call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        asked_async = bool(bound.arguments.pop("async_op", False))
        host = {key: _to_host(value) for key, value in bound.arguments.items()}
        original(**host)
        target, result = bound.arguments[written], host[written]
        with torch.no_grad():
            if isinstance(target, torch.Tensor):
                target.copy_(result)
            else:
                for out, part in zip(target, result):
                    out.copy_(part)
        calls[name] += 1
        return _Done() if asked_async else None

    return staged_call


@contextlib.contextmanager
def staged(names: Iterable[str]) -> Iterator[Counter]:
    """Within the block, the ``torch.distributed`` collectives ``names`` copy their tensors to
    host memory, run there and copy the written tensor back, whatever its device (on CPU
    tensors too, so a CPU test exercises the same path). Yields the staged calls per name.

    The functions are replaced in ``torch.distributed`` and in every loaded ``ocp_graphpar``
    module that imported them by name.
    """
    calls: Counter = Counter()
    names = list(dict.fromkeys(names))
    unknown = set(names) - set(COLLECTIVES)
    if unknown:
        raise ValueError(f"cannot stage {sorted(unknown)}; known: {', '.join(COLLECTIVES)}")
    originals = {name: getattr(dist, name) for name in names}
    modules = [dist] + [
        module
        for key, module in list(sys.modules.items())
        if key.startswith("ocp_graphpar.") and module is not None
    ]
    replaced = []
    for name, original in originals.items():
        wrapper = _through_host(original, calls, name)
        for module in modules:
            if getattr(module, name, None) is original:
                setattr(module, name, wrapper)
                replaced.append((module, name, original))
    try:
        yield calls
    finally:
        for module, name, original in replaced:
            setattr(module, name, original)
