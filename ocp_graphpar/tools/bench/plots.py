"""The report's plots: traffic, memory, time and load against P, and memory with checkpointing."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ocp_graphpar.measure.contenders import CONTENDERS
from ocp_graphpar.tools.bench.memory import memory_workloads
from ocp_graphpar.tools.bench.records import Record, WorkloadResults, organise, state_total
from ocp_graphpar.tools.bench.tables import MIB

#: The per-P plots of training workloads: title, file, measure, axis label, log axis.
VS_P = (
    (
        "Bytes per training step vs P",
        "bytes_vs_p",
        ("comm", "bytes"),
        "MiB received per rank",
        True,
    ),
    (
        "Activation memory per rank vs P",
        "memory_vs_p",
        ("memory", "activations"),
        "MiB per rank",
        False,
    ),
    ("Step time vs P", "step_time_vs_p", ("step_s",), "seconds", False),
)


def plot_all(records: list[Record], out_dir: Path) -> dict[str, str]:
    """Write the PNGs; ``{title: path relative to the report}``."""
    import matplotlib

    matplotlib.use("Agg")
    workloads, _ = organise(records)
    # memory workloads have a plot of their own; inference and device workloads tables only
    training = {
        name: results
        for name, results in workloads.items()
        if not (results.info.memory or results.info.inference or results.info.device)
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    if training:
        for title, name, keys, ylabel, log in VS_P:
            scale = 1.0 if keys == ("step_s",) else MIB
            plots[title] = plot_vs_p(training, out_dir / f"{name}.png", keys, ylabel, log, scale)
        plots["Load balance"] = plot_load(training, out_dir / "load_balance.png")
    if memory_workloads(workloads):
        title = "Per-rank memory vs P with activation checkpointing"
        plots[title] = plot_memory(memory_workloads(workloads), out_dir / "memory_ck_vs_p.png")
    return {title: f"{out_dir.name}/{path.name}" for title, path in plots.items()}


def _panels(count: int, width: float):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(count, 1), figsize=(width * max(count, 1), 4), squeeze=False)
    return fig, axes[0]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _axes(ax, title: str, sizes, ylabel: str, legend: int = 8) -> None:
    ax.set_title(title)
    ax.set_xlabel("GP ranks P")
    ax.set_xticks(sorted(sizes))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)


def plot_vs_p(workloads, path: Path, keys, ylabel: str, log: bool, scale: float) -> Path:
    fig, axes = _panels(len(workloads), 5)
    for ax, (name, results) in zip(axes, workloads.items()):
        by_contender = defaultdict(list)
        for (contender, size), run in sorted(results.runs.items(), key=lambda kv: kv[0][1]):
            if keys == ("step_s",) and run.timed() is None:
                continue  # counted only, not timed
            value = run.max(*keys) / scale
            if value > 0 or not log:  # a log axis leaves out P = 1's zero bytes
                by_contender[contender].append((size, value))
        for contender, points in by_contender.items():
            sizes, values = zip(*points)
            ax.plot(
                sizes, values, "o-" if len(points) > 1 else "s", label=CONTENDERS[contender].label
            )
        if log:
            ax.set_yscale("log")
        _axes(ax, name, {size for _, size in results.runs}, ylabel)
    return _save(fig, path)


def plot_load(workloads, path: Path) -> Path:
    import numpy as np

    panels = [
        (name, size, run)
        for name, results in workloads.items()
        for (contender, size), run in sorted(results.runs.items(), key=lambda kv: kv[0][1])
        if contender == "ours" and size > 1
    ]
    fig, axes = _panels(len(panels), 3.2)
    for ax, (name, size, run) in zip(axes, panels):
        loads = [rank["load"] for rank in run.per_rank]
        ranks = np.arange(size)
        for offset, key in zip((-0.25, 0.0, 0.25), ("atoms", "edges", "triplets")):
            counts = np.array([load[key] for load in loads], dtype=float)
            ax.bar(ranks + offset, counts / counts.mean(), width=0.25, label=key)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"{name}, P={size}", fontsize=9)
        ax.set_xlabel("rank")
        ax.set_xticks(ranks)
        ax.set_ylabel("count / mean")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_memory(chosen: list[WorkloadResults], path: Path) -> Path:
    """Per-rank memory against P for each memory workload: checkpointed activations and
    totals (state replicated and sharded), ours and upstream at P = 1, and ``1/P`` from the
    checkpointed P = 1."""
    fig, axes = _panels(len(chosen), 5)
    for ax, results in zip(axes, chosen):
        runs = results.runs
        ck = sorted(
            (p, run.max("memory", "activations")) for (c, p), run in runs.items() if c == "ours_ck"
        )
        if ck:
            sizes, peaks = zip(*ck)
            ax.plot(sizes, [v / MIB for v in peaks], "o-", label="ours, checkpointed: activations")
            split = results.state_split
            if split:
                for state, style, what in (
                    (state_total(split.unsharded), "o--", "+ state"),
                    (split.largest_share(), "o:", f"+ state sharded over {split.world}"),
                ):
                    totals = [(v + state) / MIB for v in peaks]
                    ax.plot(sizes, totals, style, label=f"ours, checkpointed: {what}")
            if sizes[0] == 1:
                ideal = [peaks[0] / p / MIB for p in sizes]
                ax.plot(sizes, ideal, "-", color="grey", lw=0.8, label="checkpointed P=1 / P")
        for contender in ("ours", results.upstream()):
            if contender and (contender, 1) in runs:
                peak = runs[contender, 1].max("memory", "activations") / MIB
                ax.plot([1], [peak], "s", label=f"{CONTENDERS[contender].label}: activations")
        _axes(ax, results.info.workload, {p for _, p in runs}, "MiB per rank", legend=7)
    return _save(fig, path)
