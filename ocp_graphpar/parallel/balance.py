"""Which rank owns which atom: a spatial order cut into pieces of equal estimated work.

Atoms are ordered spatially within each system, so few edges cross a cut, and the order is cut
into contiguous pieces of equal estimated work (``a * atoms + b * edges + c * triplets``).
Everything here reads data every rank holds identically, so every rank picks the same owners.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class WorkWeights:
    """Estimated cost of one atom, one edge and one triplet, in arbitrary units."""

    atom: float = 1.0
    edge: float = 1.0
    triplet: float = 0.1


def shared_target_triplets(dst: Tensor, *, num_atoms: int) -> Tensor:
    """``(E,)`` triplets ``b -> a <- c`` per output edge ``c -> a``: the other edges into ``a``."""
    return (torch.bincount(dst, minlength=num_atoms)[dst] - 1).clamp(min=0)


def resolve_triplets(
    triplets_per_edge: Tensor | int | None, dst: Tensor, *, num_atoms: int
) -> Tensor:
    """``(E,)`` triplets per output edge from what a caller gave: a tensor as is, one count for
    every edge, or GemNet's (``None``)."""
    if triplets_per_edge is None:
        return shared_target_triplets(dst, num_atoms=num_atoms)
    if isinstance(triplets_per_edge, int):
        return torch.full_like(dst, triplets_per_edge)
    return triplets_per_edge


def atom_work(
    edge_index: Tensor,
    num_atoms: int,
    *,
    triplets_per_edge: Tensor | int | None = None,
    weights: WorkWeights | None = None,
) -> Tensor:
    """``(N,)`` estimated work of each atom: its own, its incoming edges' and their triplets'."""
    dst = edge_index[1]
    in_degree = torch.bincount(dst, minlength=num_atoms)
    triplets_per_edge = resolve_triplets(triplets_per_edge, dst, num_atoms=num_atoms)
    triplets = torch.zeros(num_atoms, dtype=torch.double, device=dst.device)
    triplets.index_add_(0, dst, triplets_per_edge.double())
    weights = weights or WorkWeights()
    return weights.atom + weights.edge * in_degree.double() + weights.triplet * triplets


@dataclass(frozen=True)
class _Systems:
    """The batch as the balancer reads it: each system's atom span, work and coordinates."""

    spans: list[tuple[int, int]]  # [start, stop) atom range of each system
    work: list[float]  # total estimated work of each system
    coords: Tensor  # (N, 3) fractional coordinates (Cartesian for molecules)
    atom_work: Tensor  # (N,)
    edge_index: Tensor  # (2, E)


def balanced_spatial_owner(
    batch: Tensor,
    pos: Tensor,
    cell: Tensor | None,
    edge_index: Tensor,
    work: Tensor,
    size: int,
    snap: float = 0.05,
) -> Tensor:
    """Assign atoms to ``size`` ranks: contiguous in a spatial order, balanced in ``work``.

    The atoms are laid out system after system and cut where the cumulative work crosses
    ``r * total / size``; each atom goes to the rank whose share holds the midpoint of its own
    work, so a share is off by at most half an atom at each end. A cut within ``snap`` of a
    share's work from a system boundary moves onto it (a system kept whole costs no cut edge).
    The layout is chosen for the fewest cut edges among a few system orders (batch order, by
    work descending and ascending, and whole systems packed into balanced bins) and, inside
    each cut system, among atom orders (index order, and each cell axis by fractional
    coordinate, started at the widest gap so a periodic direction is cut once and a slab's
    vacuum comes first).

    Returns:
        ``(N,)`` owning rank of each atom.
    """
    counts = torch.bincount(batch) if batch.numel() else torch.zeros(0, dtype=torch.long)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    spans = [(a, a + n) for a, n in zip(starts, counts.tolist())]
    systems = _Systems(
        spans=spans,
        work=[float(work[a:b].sum()) for a, b in spans],
        coords=_fractional(batch, pos, cell),
        atom_work=work,
        edge_index=edge_index,
    )
    by_work = sorted(range(len(spans)), key=lambda i: -systems.work[i])
    layouts = [
        list(range(len(spans))),
        by_work,
        by_work[::-1],
        _packed(by_work, systems.work, size=size),
    ]
    best, best_cut = None, None
    for layout in layouts:
        owner, cut = _layout_owner(systems, layout=layout, size=size, snap=snap)
        if best_cut is None or cut < best_cut:
            best, best_cut = owner, cut
    return best if best is not None else torch.zeros_like(batch)


def _packed(by_work: list[int], system_work: list[float], *, size: int) -> list[int]:
    """Systems packed whole into ``size`` bins (largest first into the lightest bin) and laid
    out bin after bin, so the cuts fall near system boundaries."""
    bins: list[list[int]] = [[] for _ in range(size)]
    loads = [0.0] * size
    for i in by_work:
        lightest = loads.index(min(loads))
        bins[lightest].append(i)
        loads[lightest] += system_work[i]
    return [i for b in bins for i in b]


def _thresholds(bounds: list[float], *, size: int, snap: float) -> Tensor:
    """``(P - 1,)`` cumulative work at each cut, snapped onto a nearby system boundary."""
    share = bounds[-1] / size
    thresholds = []
    for r in range(1, size):
        ideal = r * share
        nearest = min(bounds, key=lambda b: abs(b - ideal))
        thresholds.append(nearest if abs(nearest - ideal) <= snap * share else ideal)
    return torch.tensor(thresholds, dtype=torch.double)


def _layout_owner(
    systems: _Systems, *, layout: list[int], size: int, snap: float
) -> tuple[Tensor, int]:
    """Owners and cut-edge count for systems laid out in the order ``layout``."""
    bounds = [0.0]
    for i in layout:
        bounds.append(bounds[-1] + systems.work[i])
    thresholds = _thresholds(bounds, size=size, snap=snap)

    src, dst = systems.edge_index
    work, device = systems.atom_work, systems.atom_work.device
    owner = torch.zeros(systems.coords.shape[0], dtype=torch.long, device=device)
    cut = 0
    for i, offset in zip(layout, bounds):
        start, stop = systems.spans[i]
        in_system = (dst >= start) & (dst < stop)
        s, d = src[in_system] - start, dst[in_system] - start
        candidates = [torch.arange(stop - start, device=device)] + [
            _cyclic_order(systems.coords[start:stop, axis]) for axis in range(3)
        ]
        options = [
            _assign(order, work[start:stop], offset=offset, thresholds=thresholds)
            for order in candidates
        ]
        costs = [int((a[s] != a[d]).sum()) for a in options]
        choice = min(range(len(options)), key=costs.__getitem__)
        owner[start:stop] = options[choice]
        cut += costs[choice]
    return owner, cut


def _assign(order: Tensor, work: Tensor, *, offset: float, thresholds: Tensor) -> Tensor:
    """Owner of each atom of one system, visited in ``order`` after ``offset`` work."""
    ordered = work[order]
    midpoint = offset + torch.cumsum(ordered, 0) - ordered / 2
    owner = torch.empty_like(order)
    owner[order] = torch.searchsorted(thresholds.to(midpoint.device), midpoint, right=True)
    return owner


def index_split_owner(
    num_atoms: int, size: int, work: Tensor | None = None, *, device: torch.device | None = None
) -> Tensor:
    """Contiguous split of the atoms in index order, for comparison: equal atom counts
    (upstream's ``np.array_split`` rule) or, given ``work (N,)``, equal work; on ``device``
    (by default ``work``'s, else the CPU)."""
    if device is None:
        device = work.device if work is not None else torch.device("cpu")
    if work is None:
        base, extra = divmod(num_atoms, size)
        counts = torch.tensor([base + (r < extra) for r in range(size)], device=device)
        return torch.repeat_interleave(
            torch.arange(size, device=device), counts, output_size=num_atoms
        )
    thresholds = torch.arange(1, size, dtype=torch.double, device=device) * float(work.sum()) / size
    return _assign(
        torch.arange(num_atoms, device=device),
        work.to(device, torch.double),
        offset=0.0,
        thresholds=thresholds,
    )


def _fractional(batch: Tensor, pos: Tensor, cell: Tensor | None) -> Tensor:
    if cell is None:
        return pos.double()
    cell = cell.double().view(-1, 3, 3)
    singular = torch.linalg.det(cell).abs() < 1e-9
    safe = torch.where(
        singular[:, None, None], torch.eye(3, dtype=cell.dtype, device=cell.device), cell
    )
    frac = torch.linalg.solve(safe[batch].transpose(1, 2), pos.double().unsqueeze(-1)).squeeze(-1)
    return torch.where(singular[batch, None], pos.double(), frac - frac.floor())


def _cyclic_order(coord: Tensor) -> Tensor:
    """Sort a periodic coordinate starting just after its widest gap."""
    order = torch.argsort(coord, stable=True)
    if coord.numel() < 2:
        return order
    sorted_coord = coord[order]
    gaps = torch.cat(
        [sorted_coord[1:] - sorted_coord[:-1], sorted_coord[:1] + 1 - sorted_coord[-1:]]
    )
    start = (int(torch.argmax(gaps)) + 1) % coord.numel()
    return torch.roll(order, -start)
