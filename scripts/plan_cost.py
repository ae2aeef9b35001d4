"""Host cost of one partition plan: ``build_partition`` per call, one thread, on synthetic
periodic slabs shaped as OC20 batches are (0.08 atoms/A^3, each atom's 40 nearest neighbours,
periodic in x and y, 15 A of vacuum above the slab).

Prints a markdown table (median of ``--repeats`` calls after one warm-up, the plan of rank 0)
and writes it, with a PNG of the same figures, to ``--out`` (default ``docs/benchmarks``):

    .venv/bin/python scripts/plan_cost.py
    .venv/bin/python scripts/plan_cost.py --sizes 2 4 8 --repeats 9

The first table times the measured entry point, ``build_partition(batch, pos, cell,
edge_index, size=P, rank=0, num_systems=B)``; the second adds GemNet's reverse edges (the
kNN graph made symmetric), as the models call it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from tqdm import tqdm

from ocp_graphpar.atomic import write_atomic
from ocp_graphpar.parallel import build_partition

DENSITY = 0.08  # atoms per A^3
NEIGHBOURS = 40
VACUUM = 15.0  # A


@dataclass(frozen=True)
class Batch:
    batch: torch.Tensor  # (N,)
    pos: torch.Tensor  # (N, 3)
    cell: torch.Tensor  # (B, 3, 3)
    edge_index: torch.Tensor  # (2, E)
    reverse_edge: torch.Tensor | None  # (E,)
    num_systems: int


def slab(num_atoms: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A cubic slab of random atoms at ``DENSITY``: positions ``(n, 3)``, cell ``(3, 3)`` and
    the kNN edges ``(2, n * NEIGHBOURS)`` (source, target) under x/y periodicity."""
    side = (num_atoms / DENSITY) ** (1 / 3)
    pos = rng.uniform(0.0, side, size=(num_atoms, 3))
    cell = np.diag([side, side, side + VACUUM])
    # z is given a box twice the cell's, so neighbours never wrap through the vacuum
    tree = cKDTree(pos, boxsize=[side, side, 2 * (side + VACUUM)])
    _, neighbours = tree.query(pos, k=NEIGHBOURS + 1)
    dst = np.repeat(np.arange(num_atoms), NEIGHBOURS)
    src = neighbours[:, 1:].reshape(-1)
    return pos, cell, np.stack([src, dst])


def synthetic_batch(systems: int, atoms: int, *, symmetric: bool, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    positions, cells, edges, offset = [], [], [], 0
    for _ in range(systems):
        pos, cell, edge_index = slab(atoms, rng)
        if symmetric:
            edge_index = np.unique(np.concatenate([edge_index, edge_index[::-1]], 1), axis=1)
        positions.append(pos)
        cells.append(cell)
        edges.append(edge_index + offset)
        offset += atoms
    edge_index = torch.from_numpy(np.concatenate(edges, 1))
    reverse = _reverse_edges(edge_index, offset) if symmetric else None
    return Batch(
        batch=torch.arange(systems).repeat_interleave(atoms),
        pos=torch.from_numpy(np.concatenate(positions)),
        cell=torch.from_numpy(np.stack(cells)),
        edge_index=edge_index,
        reverse_edge=reverse,
        num_systems=systems,
    )


def _reverse_edges(edge_index: torch.Tensor, num_atoms: int) -> torch.Tensor:
    key = edge_index[0] * num_atoms + edge_index[1]
    reverse_key = edge_index[1] * num_atoms + edge_index[0]
    order = torch.argsort(key)
    return order[torch.searchsorted(key[order], reverse_key)]


def plan_time(batch: Batch, *, size: int, repeats: int, reverse: bool) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one ``build_partition`` call (rank 0's plan)."""

    def call():
        build_partition(
            batch.batch,
            batch.pos,
            batch.cell,
            batch.edge_index,
            size=size,
            rank=0,
            num_systems=batch.num_systems,
            reverse_edge=batch.reverse_edge if reverse else None,
        )

    call()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


CASES = [(8, 80), (32, 80), (1, 10_000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    tables, figures = [], {}
    for reverse in (False, True):
        rows = []
        jobs = [(case, p) for case in CASES for p in args.sizes]
        results: dict[tuple, tuple[float, float]] = {}
        batches = {case: synthetic_batch(*case, symmetric=reverse) for case in CASES}
        for case, p in tqdm(jobs, desc="reverse edges" if reverse else "entry point"):
            results[case, p] = plan_time(
                batches[case], size=p, repeats=args.repeats, reverse=reverse
            )
        for case in CASES:
            systems, atoms = case
            edges = batches[case].edge_index.shape[1]
            label = f"{systems} x {atoms} atoms ({edges / 1e3:.1f}k edges)"
            cells = " | ".join(
                f"{results[case, p][0]:.1f} ms ({results[case, p][1]:.1f})" for p in args.sizes
            )
            rows.append(f"| {label} | {cells} |")
            figures[reverse, label] = [results[case, p][0] for p in args.sizes]
        title = "with reverse edges (GemNet)" if reverse else "entry point, no reverse edges"
        header = " | ".join(f"P = {p}" for p in args.sizes)
        rule = "|".join("---:" for _ in args.sizes)
        tables.append(f"**{title}**\n\n| batch | {header} |\n|---|{rule}|\n" + "\n".join(rows))

    text = (
        f"# Host cost of a partition plan\n\n`scripts/plan_cost.py`, torch {torch.__version__}, "
        f"one thread, median of {args.repeats} calls of `build_partition` (rank 0's plan) on "
        f"synthetic periodic slabs ({DENSITY} atoms/A^3, {NEIGHBOURS} nearest neighbours): wall "
        "time per call, and in parentheses the calling thread's CPU time (what other load on the "
        "machine does not inflate).\n\n" + "\n\n".join(tables) + "\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "plan_cost.md", text)
    _plot(figures, sizes=args.sizes, path=args.out / "plan_cost.png")


def _plot(figures: dict, *, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for (reverse, label), ms in figures.items():
        axes[int(reverse)].plot(sizes, ms, marker="o", label=label)
    for ax, title in zip(axes, ("entry point", "with reverse edges")):
        ax.set(title=title, xlabel="GP size P", xticks=sizes, yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ms per plan (one thread)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
