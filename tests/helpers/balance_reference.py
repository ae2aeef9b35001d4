"""The balancer written the plain way, one system and one candidate at a time: the
definition ``ocp_graphpar.parallel.balance.balanced_spatial_owner`` computes in tensor
operations over every system, layout and atom order at once (test_balance.py holds them
equal)."""

from __future__ import annotations

import torch
from torch import Tensor


def reference_owner(
    batch: Tensor, coords: Tensor, edge_index: Tensor, work: Tensor, *, size: int, snap: float
) -> Tensor:
    """``(N,)`` owners for fractional (or Cartesian) ``coords (N, 3)``."""
    counts = torch.bincount(batch)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    spans = [(a, a + n) for a, n in zip(starts, counts.tolist())]
    system_work = [float(work[a:b].sum()) for a, b in spans]
    by_work = sorted(range(len(spans)), key=lambda i: -system_work[i])
    layouts = [list(range(len(spans))), by_work, by_work[::-1], _packed(by_work, system_work, size)]
    best, best_cut = None, None
    for layout in layouts:
        owner, cut = _layout_owner(spans, system_work, coords, work, edge_index, layout, size, snap)
        if best_cut is None or cut < best_cut:
            best, best_cut = owner, cut
    return best


def _packed(by_work, system_work, size):
    bins, loads = [[] for _ in range(size)], [0.0] * size
    for i in by_work:
        lightest = loads.index(min(loads))
        bins[lightest].append(i)
        loads[lightest] += system_work[i]
    return [i for b in bins for i in b]


def _layout_owner(spans, system_work, coords, work, edge_index, layout, size, snap):
    bounds = [0.0]
    for i in layout:
        bounds.append(bounds[-1] + system_work[i])
    share = bounds[-1] / size
    thresholds = []
    for r in range(1, size):
        ideal = r * share
        nearest = min(bounds, key=lambda b: abs(b - ideal))
        thresholds.append(nearest if abs(nearest - ideal) <= snap * share else ideal)
    thresholds = torch.tensor(thresholds, dtype=torch.double)
    src, dst = edge_index
    owner = torch.zeros(coords.shape[0], dtype=torch.long)
    cut = 0
    for i, offset in zip(layout, bounds):
        start, stop = spans[i]
        inside = (dst >= start) & (dst < stop)
        s, d = src[inside] - start, dst[inside] - start
        orders = [torch.arange(stop - start)] + [
            _cyclic_order(coords[start:stop, axis]) for axis in range(3)
        ]
        options = []
        for order in orders:
            ordered = work[start:stop][order]
            midpoint = offset + torch.cumsum(ordered, 0) - ordered / 2
            option = torch.empty_like(order)
            option[order] = torch.searchsorted(thresholds, midpoint, right=True)
            options.append(option)
        costs = [int((a[s] != a[d]).sum()) for a in options]
        choice = min(range(len(options)), key=costs.__getitem__)
        owner[start:stop] = options[choice]
        cut += costs[choice]
    return owner, cut


def _cyclic_order(coord: Tensor) -> Tensor:
    order = torch.argsort(coord, stable=True)
    if coord.numel() < 2:
        return order
    ordered = coord[order]
    gaps = torch.cat([ordered[1:] - ordered[:-1], ordered[:1] + 1 - ordered[-1:]])
    return torch.roll(order, -((int(torch.argmax(gaps)) + 1) % coord.numel()))
