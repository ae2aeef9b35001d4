"""Which rank owns which atom: a spatial order cut into pieces of equal estimated work.

Atoms are ordered spatially within each system, so few edges cross a cut, and the order is cut
into contiguous pieces of equal estimated work (``a * atoms + b * edges + c * triplets``).
Everything here reads data every rank holds identically, so every rank picks the same owners.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ocp_graphpar.parallel.indexing import stable_argsort


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
    # per atom, from its in-degree d where the count per edge is uniform: GemNet's d (d - 1)
    if triplets_per_edge is None:
        triplets = (in_degree * (in_degree - 1)).double()
    elif isinstance(triplets_per_edge, int):
        triplets = (in_degree * triplets_per_edge).double()
    else:
        triplets = torch.zeros(num_atoms, dtype=torch.double, device=dst.device)
        triplets.index_add_(0, dst, triplets_per_edge.double())
    weights = weights or WorkWeights()
    return weights.atom + weights.edge * in_degree.double() + weights.triplet * triplets


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

    Every system, layout and atom order is handled at once in tensor operations: the host cost
    grows with the batch's size, not with its number of systems.

    Args:
        batch: ``(N,)`` system of each atom, non-decreasing.
        pos: ``(N, 3)`` positions; cell: ``(B, 3, 3)`` or ``None``.
        edge_index: ``(2, E)`` ``[source, target]``; work: ``(N,)`` estimated work per atom.

    Returns:
        ``(N,)`` owning rank of each atom.
    """
    if size == 1 or batch.numel() == 0:
        return torch.zeros_like(batch)
    systems = _Systems.of(batch)
    coords = fractional_coordinates(batch, pos, cell)
    atoms = torch.arange(batch.numel(), device=batch.device)
    orders = torch.cat([atoms[None], _cyclic_orders(coords, systems)])
    system_work = _system_work(work, systems)
    layouts = _layouts(system_work, size=size)
    num_layouts, num_orders = layouts.shape[0], orders.shape[0]
    by_position = _owners_by_position(
        systems, orders, work, system_work=system_work, layouts=layouts, size=size, snap=snap
    )
    # A system no cut falls in keeps one owner whatever its order: only the others' edges count.
    last = (systems.starts + systems.sizes - 1).clamp(min=0)
    split = (by_position[..., systems.starts] != by_position[..., last]).flatten(0, 1).any(0)
    owners = _owners_by_atom(by_position, orders)
    costs = _cut_edges(owners, edge_index, systems, counted=split)
    cost, choice = costs.view(-1, num_layouts, num_orders).min(dim=-1)  # first least, as a loop
    layout = int(torch.argmin(cost.sum(dim=0)))
    column = layout * num_orders + choice[:, layout]
    return owners[atoms, column[batch]].long()


@dataclass(frozen=True)
class _Systems:
    """The batch's systems as contiguous atom spans, with each atom's place in its system."""

    count: int  # B
    batch: Tensor  # (N,) system of each atom
    sizes: Tensor  # (B,) atoms per system
    starts: Tensor  # (B,) first atom of each system
    column: Tensor  # (N,) position of each atom within its system
    width: int  # the largest system's size (M)

    @staticmethod
    def of(batch: Tensor) -> _Systems:
        sizes = torch.bincount(batch)
        starts = torch.cumsum(sizes, 0) - sizes
        column = torch.arange(batch.numel(), device=batch.device) - starts[batch]
        return _Systems(
            count=sizes.numel(),
            batch=batch,
            sizes=sizes,
            starts=starts,
            column=column,
            width=int(sizes.max()),
        )

    def padded(self, flat: Tensor) -> Tensor:
        """``(..., N)`` per-atom values in system-major order as ``(..., B, M)``, zero-padded:
        a scan along the last axis then runs over each system alone, in the same order and
        with the same rounding as over that system's own slice."""
        out = flat.new_zeros((*flat.shape[:-1], self.count, self.width))
        out[..., self.batch, self.column] = flat
        return out


def _system_work(work: Tensor, systems: _Systems) -> Tensor:
    """``(B,)`` total work of each system."""
    return torch.zeros(systems.count, dtype=work.dtype, device=work.device).index_add_(
        0, systems.batch, work
    )


def _layouts(system_work: Tensor, *, size: int) -> Tensor:
    """``(L, B)`` the system orders tried, each once: batch order, by work descending and
    ascending, and packed into ``size`` balanced bins."""
    by_work = torch.sort(-system_work, stable=True).indices.tolist()
    candidates = [
        list(range(len(by_work))),
        by_work,
        by_work[::-1],
        _packed(by_work, system_work.tolist(), size=size),
    ]
    unique = list(dict.fromkeys(tuple(layout) for layout in candidates))
    return torch.tensor(unique, dtype=torch.long, device=system_work.device)


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


def _thresholds(bounds: Tensor, *, size: int, snap: float) -> Tensor:
    """``(L, P - 1)`` cumulative work at each cut of each layout, snapped onto the nearest
    system boundary of ``bounds (L, B + 1)`` when one lies within ``snap`` of a share."""
    share = bounds[:, -1:] / size
    ideal = torch.arange(1, size, dtype=bounds.dtype, device=bounds.device) * share
    distance = (bounds[:, None, :] - ideal[:, :, None]).abs()
    nearest = bounds.gather(1, distance.argmin(dim=-1))
    return torch.where((nearest - ideal).abs() <= snap * share, nearest, ideal)


def _owners_by_position(
    systems: _Systems,
    orders: Tensor,
    work: Tensor,
    *,
    system_work: Tensor,
    layouts: Tensor,
    size: int,
    snap: float,
) -> Tensor:
    """``(L, C, N)`` owner of the atom at each position of every atom order, under every
    layout.

    Args:
        orders: ``(C, N)`` atoms in each candidate order, system-major.
        layouts: ``(L, B)`` system orders.
    """
    num_layouts, num_orders, num_atoms = layouts.shape[0], orders.shape[0], orders.shape[1]
    bounds = torch.cumsum(
        torch.cat([system_work.new_zeros(num_layouts, 1), system_work[layouts]], dim=1), dim=1
    )
    thresholds = _thresholds(bounds, size=size, snap=snap)
    # (L, B) work laid out before each system
    offsets = torch.empty_like(bounds[:, 1:]).scatter_(1, layouts, bounds[:, :-1])

    batch = systems.batch
    ordered = work[orders]  # (C, N)
    cumulative = systems.padded(ordered).cumsum(dim=-1)[:, batch, systems.column]
    midpoints = (offsets[:, None, batch] + cumulative) - ordered / 2  # (L, C, N)
    owner = torch.searchsorted(thresholds, midpoints.view(num_layouts, -1), right=True)
    return owner.view(num_layouts, num_orders, num_atoms)


def _owners_by_atom(by_position: Tensor, orders: Tensor) -> Tensor:
    """``(N, L * C)`` owner of each atom under every layout and order: a row per atom, read
    once per edge end when counting cuts."""
    num_layouts, num_orders, num_atoms = by_position.shape
    by_atom = torch.empty_like(by_position)
    by_atom.scatter_(2, orders.expand_as(by_atom), by_position)
    return by_atom.permute(2, 0, 1).reshape(num_atoms, -1)


def _cut_edges(owners: Tensor, edge_index: Tensor, systems: _Systems, *, counted: Tensor) -> Tensor:
    """``(B, K)`` edges whose ends have different owners, per system of the target, for each
    of the ``K`` columns of ``owners (N, K)``; zero for systems not ``counted (B,)``."""
    src, dst = edge_index
    num_columns = owners.shape[1]
    costs = torch.zeros((systems.count, num_columns), dtype=torch.double, device=owners.device)
    if not bool(counted.any()):
        return costs
    if systems.count > 1 and not bool(counted.all()):
        kept = counted[systems.batch[dst]].nonzero().flatten()
        src, dst = src[kept], dst[kept]
    if int(owners.max()) > _BYTE:
        return costs.index_add_(0, systems.batch[dst], (owners[src] != owners[dst]).double())
    flags = _differing_bytes(owners, src, dst)
    if systems.count == 1:
        return costs + _byte_sums(flags)[:num_columns]
    per_edge = flags.view(torch.uint8).view(src.numel(), -1)[:, :num_columns]
    return costs.index_add_(0, systems.batch[dst], per_edge.double())


_BYTE = 255


def _differing_bytes(owners: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """``(E, W)`` words whose byte ``k`` is 1 where column ``k`` of ``owners (N, K)`` (ranks
    below 256) differs between an edge's ends, else 0.

    Each atom's owners are packed one byte per column into ``W`` words of 4 bytes (for ``K <=
    4``) or 8, so an edge end is one gather however many columns there are.
    """
    num_atoms, num_columns = owners.shape
    dtype = torch.int32 if num_columns <= 4 else torch.int64
    width = dtype.itemsize
    words = -(-num_columns // width)
    packed = torch.zeros((num_atoms, width * words), dtype=torch.uint8, device=owners.device)
    packed[:, :num_columns] = owners
    packed = packed.view(dtype)
    if words == 1:  # a gather of scalars is much cheaper than one of rows
        packed = packed.view(-1)
    differ = (packed.index_select(0, src) ^ packed.index_select(0, dst)).view(-1, words)
    # fold each byte's bits onto its lowest bit (shifts stay within a byte where it matters)
    differ |= differ >> 4
    differ |= differ >> 2
    differ |= differ >> 1
    return differ & int.from_bytes(b"\x01" * width, "little")


def _byte_sums(flags: Tensor) -> Tensor:
    """``(bytes per row,)`` sums over rows of the bytes of ``flags (E, W)``, each byte 0 or 1:
    words are added in runs of 255 rows, which no byte can overflow, before the bytes split."""
    rows, words = flags.shape
    whole = rows - rows % _BYTE
    runs = torch.cat(
        [
            flags[:whole].view(-1, _BYTE, words).sum(dim=1, dtype=flags.dtype),
            flags[whole:].sum(dim=0, keepdim=True, dtype=flags.dtype),
        ]
    )
    return runs.view(torch.uint8).view(runs.shape[0], -1).sum(dim=0)


def _cyclic_orders(coords: Tensor, systems: _Systems) -> Tensor:
    """``(3, N)`` atoms of each system sorted along each axis of ``coords (N, 3)``, started
    just after the widest gap of that periodic coordinate (ties kept in index order)."""
    batch, sizes = systems.batch, systems.sizes[systems.batch]
    order = torch.argsort(coords, dim=0, stable=True)  # (N, 3)
    if systems.count > 1:  # regroup by system, keeping the coordinate order inside each
        order = order.gather(0, stable_argsort(batch[order], num_keys=systems.count))
    ordered = coords.gather(0, order)
    last = (systems.column == sizes - 1)[:, None]
    next_atom = torch.arange(1, batch.numel() + 1, device=batch.device)
    following = torch.where(last[:, 0], systems.starts[batch], next_atom)  # cyclic successor
    after = ordered.index_select(0, following)
    gaps = torch.where(last, (after + 1) - ordered, after - ordered)
    shift = (_first_max_column(gaps, systems) + 1) % systems.sizes.clamp(min=1)[:, None]
    rolled = (systems.column[:, None] + shift[batch]) % sizes[:, None]
    return order.gather(0, systems.starts[batch][:, None] + rolled).T


def _first_max_column(values: Tensor, systems: _Systems) -> Tensor:
    """``(B, F)`` column of the first largest of each system's values ``(N, F)``."""
    index = systems.batch[:, None].expand_as(values)
    largest = values.new_full((systems.count, values.shape[1]), float("-inf"))
    largest.scatter_reduce_(0, index, values, reduce="amax")
    num_atoms = values.shape[0]
    candidates = torch.where(values == largest.gather(0, index), systems.column[:, None], num_atoms)
    first = torch.full_like(largest, num_atoms, dtype=torch.long)
    return first.scatter_reduce_(0, index, candidates, reduce="amin") % num_atoms


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
    work = work.to(device, torch.double)
    thresholds = torch.arange(1, size, dtype=torch.double, device=device) * float(work.sum()) / size
    midpoints = torch.cumsum(work, 0) - work / 2
    return torch.searchsorted(thresholds, midpoints, right=True)


def fractional_coordinates(batch: Tensor, pos: Tensor, cell: Tensor | None) -> Tensor:
    """``(n_atoms, 3)`` float64 positions in their system's cell (Cartesian without a cell, or
    where the cell is singular)."""
    if cell is None:
        return pos.double()
    cell = cell.double().view(-1, 3, 3)
    singular = torch.linalg.det(cell).abs() < 1e-9
    safe = torch.where(
        singular[:, None, None], torch.eye(3, dtype=cell.dtype, device=cell.device), cell
    )
    frac = torch.linalg.solve(safe[batch].transpose(1, 2), pos.double().unsqueeze(-1)).squeeze(-1)
    return torch.where(singular[batch, None], pos.double(), frac - frac.floor())
