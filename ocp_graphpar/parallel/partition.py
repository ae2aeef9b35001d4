"""The partition plan: which GP rank owns which atoms, edges and triplets of a batch.

Built once per batch, from data every rank already has (batch vector, positions, cell, edges,
triplet counts), so every rank computes the same plan with no communication. The rules:

* atoms are ordered spatially within each system, so few edges cross a cut, and the order is cut
  into contiguous pieces of equal estimated work (``a * edges + b * triplets + c * atoms``);
* a rank owns the edges whose target atom it owns ("owner computes"), and with them every
  GemNet triplet ``b -> a <- c``, which shares the target ``a``;
* two halos carry what crosses the cut: the source atoms of owned edges that a peer owns, and the
  reverse edge of each owned edge when a peer owns it.

Local numbering: a rank's owned atoms (edges) are its rows ``0 .. n - 1`` in ascending global
order; received halo rows follow them, grouped by source rank, ascending within a rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ocp_graphpar.parallel.collectives import all_to_all, gather_replicated
from ocp_graphpar.parallel.groups import gp_rank, gp_size


@dataclass(frozen=True)
class WorkWeights:
    """Estimated cost of one atom, one edge and one triplet, in arbitrary units."""

    atom: float = 1.0
    edge: float = 1.0
    triplet: float = 0.1


@dataclass(frozen=True)
class Halo:
    """Rows a rank needs but does not own, and the rows it sends to peers that need its own.

    Attributes:
        send_index: ``(n_send,)`` local rows to send, grouped by destination rank.
        send_counts: rows sent to each GP rank, ``(P,)``.
        recv_counts: rows received from each GP rank, ``(P,)``.
        recv_global: ``(n_recv,)`` global ids of the received rows, in arrival order.
    """

    send_index: Tensor
    send_counts: list[int]
    recv_counts: list[int]
    recv_global: Tensor

    @property
    def num_recv(self) -> int:
        return sum(self.recv_counts)

    @property
    def num_send(self) -> int:
        return sum(self.send_counts)

    def exchange(self, owned: Tensor) -> Tensor:
        """Rows of peers' owned tensors that this rank needs.

        Args:
            owned: ``(n_owned, *F)`` this rank's rows.
        Returns:
            ``(n_recv, *F)``; the gradient flows back to the owners (the reverse exchange).
        """
        return all_to_all(owned[self.send_index], self.send_counts, self.recv_counts)

    def reverse(self, received: Tensor, num_owned: int) -> Tensor:
        """The adjoint of :meth:`exchange`: send halo rows back and sum them into their owners.

        Args:
            received: ``(n_recv, *F)`` values attached to halo rows.
        Returns:
            ``(num_owned, *F)`` sums over every peer's rows for each owned row.
        """
        back = all_to_all(received, self.recv_counts, self.send_counts)
        out = back.new_zeros((num_owned, *back.shape[1:]))
        return out.index_add(0, self.send_index, back)


@dataclass(frozen=True)
class PartitionStats:
    """Per-rank counts (lists of length P) and the totals that decide a partition's quality."""

    atoms: list[int]
    edges: list[int]
    triplets: list[int]
    load: list[float]
    atom_halo: list[int]
    reverse_halo: list[int]
    cut_edges: int

    @property
    def load_imbalance(self) -> float:
        """max / mean estimated work over the ranks (1.0 is perfect balance)."""
        mean = sum(self.load) / len(self.load)
        return max(self.load) / mean if mean > 0 else 1.0


@dataclass(frozen=True)
class PartitionPlan:
    """One batch split over the ranks of a GP group; every field is identical on every rank
    except the ``rank``-specific index maps.

    Attributes:
        rank, size: this rank and the GP group size P.
        atom_owner: ``(N,)`` owning rank of every atom.
        edge_owner: ``(E,)`` owning rank of every edge (the owner of its target atom).
        edge_rows: ``(E,)`` row of every edge among its owner's owned edges.
        edge_gather_index: ``(E,)`` row of every edge in the rank-major concatenation of every
            rank's owned edges (what ``gather_rows`` of per-edge rows returns).
        atoms: ``(n_atoms,)`` global ids of the owned atoms.
        edges: ``(n_edges,)`` global ids of the owned edges (target atom owned).
        edge_src: ``(n_edges,)`` source atom of each owned edge, as a row of
            ``cat([owned atoms, atom_halo rows])``.
        edge_dst: ``(n_edges,)`` target atom of each owned edge, as an owned-atom row.
        edge_reverse: ``(n_edges,)`` reverse edge of each owned edge, as a row of
            ``cat([owned edges, reverse_halo rows])``; ``None`` without reverse edges.
        atom_halo, reverse_halo: the two exchanges (``reverse_halo`` may be ``None``).
        atom_gather_index: ``(N,)`` row of each global atom in the rank-major concatenation
            of every rank's owned atoms (what :meth:`gather_atoms` receives).
        stats: partition quality figures.
    """

    rank: int
    size: int
    atom_owner: Tensor
    edge_owner: Tensor
    edge_rows: Tensor
    edge_gather_index: Tensor
    atoms: Tensor
    edges: Tensor
    edge_src: Tensor
    edge_dst: Tensor
    edge_reverse: Tensor | None
    atom_halo: Halo
    reverse_halo: Halo | None
    atom_gather_index: Tensor
    stats: PartitionStats = field(repr=False)

    @property
    def num_atoms(self) -> int:
        return int(self.atoms.numel())

    @property
    def num_edges(self) -> int:
        return int(self.edges.numel())

    def with_halo(self, owned_atoms: Tensor) -> Tensor:
        """Owned per-atom rows ``(n_atoms, *F)`` followed by the halo atoms' rows from their
        owners; ``edge_src`` and ``edge_dst`` index the result."""
        return torch.cat([owned_atoms, self.atom_halo.exchange(owned_atoms)])

    def source_rows(self, owned_atoms: Tensor) -> Tensor:
        """Per-edge source-atom rows ``(n_edges, *F)`` from owned per-atom rows ``(n_atoms, *F)``."""
        return self.with_halo(owned_atoms)[self.edge_src]

    def reverse_rows(self, owned_edges: Tensor) -> Tensor:
        """Per-edge rows of each owned edge's reverse edge, ``(n_edges, *F)``."""
        if self.reverse_halo is None or self.edge_reverse is None:
            raise ValueError("the plan was built without reverse edges")
        extended = torch.cat([owned_edges, self.reverse_halo.exchange(owned_edges)])
        return extended[self.edge_reverse]

    def edge_halo(self, requester: Tensor, edge: Tensor) -> tuple[Halo, Tensor]:
        """A halo of edges other ranks own, for models whose work needs more than the reverse
        edge (e.g. DimeNet++'s input edges ``k -> j`` of triplets ``k -> j -> i``).

        Args:
            requester, edge: ``(M,)`` pairs (rank that needs the edge, global edge id), the same
                on every rank; duplicates and pairs a rank owns itself are dropped.
        Returns:
            The halo, and ``(E,)`` the row of every global edge in ``cat([owned edges,
            received edges])`` (-1 where this rank holds neither).
        """
        halo, _ = build_halo(requester, edge, self.edge_owner, self.edge_rows, self.size, self.rank)
        return halo, _slots(self.edge_owner.numel(), self.edges, halo.recv_global)

    def gather_atoms(self, owned_atoms: Tensor) -> Tensor:
        """Per-atom rows of every rank in global atom order, ``(N, *F)``, on every rank, for
        consumers that every rank runs identically (outputs, losses)."""
        return gather_replicated(owned_atoms, self.stats.atoms)[self.atom_gather_index]


def build_partition(
    batch: Tensor,
    pos: Tensor,
    cell: Tensor | None,
    edge_index: Tensor,
    *,
    size: int | None = None,
    rank: int | None = None,
    reverse_edge: Tensor | None = None,
    triplets_per_edge: Tensor | None = None,
    weights: WorkWeights | None = None,
    atom_owner: Tensor | None = None,
) -> PartitionPlan:
    """Partition a batch over ``size`` GP ranks and return the plan of rank ``rank``
    (by default this rank and its GP group).

    Args:
        batch: ``(N,)`` system of each atom, non-decreasing.
        pos: ``(N, 3)`` positions (only read, never differentiated).
        cell: ``(B, 3, 3)`` cells, rows are lattice vectors; ``None`` or singular for molecules.
        edge_index: ``(2, E)`` ``[source, target]`` atom ids.
        reverse_edge: ``(E,)`` id of each edge's reverse edge (GemNet's ``id_swap``), optional.
        triplets_per_edge: ``(E,)`` triplets whose output edge is each edge; by default the
            in-degree of the target minus one (GemNet's ``b -> a <- c``).
        weights: work estimate for balancing.
        atom_owner: ``(N,)`` a given assignment of atoms to ranks (e.g. to compare partitions).
    """
    size = gp_size() if size is None else size
    rank = gp_rank() if rank is None else rank
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a GP group of size {size}")
    batch, pos, edge_index = batch.detach(), pos.detach(), edge_index.detach()
    num_atoms, device = batch.numel(), batch.device
    src, dst = edge_index[0], edge_index[1]
    if triplets_per_edge is None:
        triplets_per_edge = shared_target_triplets(dst, num_atoms)
    work = atom_work(edge_index, num_atoms, triplets_per_edge, weights)
    if atom_owner is None:
        atom_owner = balanced_spatial_owner(batch, pos, cell, edge_index, work, size)
    atom_owner = atom_owner.to(device=device, dtype=torch.long)
    edge_owner = atom_owner[dst]

    atom_local = _local_rows(atom_owner, size)
    edge_rows = _local_rows(edge_owner, size)
    atoms = (atom_owner == rank).nonzero().flatten()
    edges = (edge_owner == rank).nonzero().flatten()

    atom_halo, atom_halo_sizes = build_halo(edge_owner, src, atom_owner, atom_local, size, rank)
    atom_slot = _slots(num_atoms, atoms, atom_halo.recv_global)

    reverse_halo = edge_reverse = None
    reverse_sizes = [0] * size
    if reverse_edge is not None:
        reverse_halo, reverse_sizes = build_halo(
            edge_owner, reverse_edge, edge_owner, edge_rows, size, rank
        )
        edge_slot = _slots(src.numel(), edges, reverse_halo.recv_global)
        edge_reverse = edge_slot[reverse_edge[edges]]

    stats = PartitionStats(
        atoms=_counts(atom_owner, size),
        edges=_counts(edge_owner, size),
        triplets=_sum_by_rank(triplets_per_edge, edge_owner, size),
        load=torch.zeros(size, dtype=torch.double, device=device)
        .index_add_(0, atom_owner, work)
        .tolist(),
        atom_halo=atom_halo_sizes,
        reverse_halo=reverse_sizes,
        cut_edges=int((atom_owner[src] != atom_owner[dst]).sum()),
    )
    return PartitionPlan(
        rank=rank,
        size=size,
        atom_owner=atom_owner,
        edge_owner=edge_owner,
        edge_rows=edge_rows,
        edge_gather_index=edge_rows + _starts(edge_owner, size)[edge_owner],
        atoms=atoms,
        edges=edges,
        edge_src=atom_slot[src[edges]],
        edge_dst=atom_slot[dst[edges]],
        edge_reverse=edge_reverse,
        atom_halo=atom_halo,
        reverse_halo=reverse_halo,
        atom_gather_index=atom_local + _starts(atom_owner, size)[atom_owner],
        stats=stats,
    )


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
    work descending and ascending, and whole systems packed into balanced bins) and, inside each cut system, among atom orders (index order,
    and each cell axis by fractional coordinate, started at the widest gap so a periodic
    direction is cut once and a slab's vacuum comes first).

    Returns:
        ``(N,)`` owning rank of each atom.
    """
    coords = _fractional(batch, pos, cell)
    counts = torch.bincount(batch) if batch.numel() else torch.zeros(0, dtype=torch.long)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    spans = [(a, a + n) for a, n in zip(starts, counts.tolist())]
    system_work = [float(work[a:b].sum()) for a, b in spans]
    by_work = sorted(range(len(spans)), key=lambda i: -system_work[i])
    layouts = [list(range(len(spans))), by_work, by_work[::-1], _packed(by_work, system_work, size)]
    best, best_cut = None, None
    for layout in layouts:
        owner, cut = _layout_owner(layout, spans, system_work, coords, edge_index, work, size, snap)
        if best_cut is None or cut < best_cut:
            best, best_cut = owner, cut
    return best if best is not None else torch.zeros_like(batch)


def _packed(by_work: list[int], system_work: list[float], size: int) -> list[int]:
    """Systems packed whole into ``size`` bins (largest first into the lightest bin) and laid
    out bin after bin, so the cuts fall near system boundaries."""
    bins: list[list[int]] = [[] for _ in range(size)]
    loads = [0.0] * size
    for i in by_work:
        lightest = loads.index(min(loads))
        bins[lightest].append(i)
        loads[lightest] += system_work[i]
    return [i for b in bins for i in b]


def _layout_owner(layout, spans, system_work, coords, edge_index, work, size, snap):
    """Owners and cut-edge count for systems laid out in the order ``layout``."""
    total = sum(system_work)
    share = total / size
    bounds = [0.0]
    for i in layout:
        bounds.append(bounds[-1] + system_work[i])
    thresholds = []
    for r in range(1, size):
        ideal = r * share
        nearest = min(bounds, key=lambda b: abs(b - ideal))
        thresholds.append(nearest if abs(nearest - ideal) <= snap * share else ideal)
    thresholds = torch.tensor(thresholds, dtype=torch.double)

    src, dst = edge_index
    owner = torch.zeros(coords.shape[0], dtype=torch.long, device=work.device)
    cut = 0
    for i, offset in zip(layout, bounds):
        start, stop = spans[i]
        in_system = (dst >= start) & (dst < stop)
        s, d = src[in_system] - start, dst[in_system] - start
        candidates = [torch.arange(stop - start, device=work.device)] + [
            _cyclic_order(coords[start:stop, axis]) for axis in range(3)
        ]
        options = [_assign(order, work[start:stop], offset, thresholds) for order in candidates]
        costs = [int((a[s] != a[d]).sum()) for a in options]
        choice = min(range(len(options)), key=costs.__getitem__)
        owner[start:stop] = options[choice]
        cut += costs[choice]
    return owner, cut


def _assign(order: Tensor, work: Tensor, offset: float, thresholds: Tensor) -> Tensor:
    """Owner of each atom of one system, visited in ``order`` after ``offset`` work."""
    ordered = work[order]
    midpoint = offset + torch.cumsum(ordered, 0) - ordered / 2
    owner = torch.empty_like(order)
    owner[order] = torch.searchsorted(thresholds.to(midpoint.device), midpoint, right=True)
    return owner


def index_split_owner(num_atoms: int, size: int, work: Tensor | None = None) -> Tensor:
    """Contiguous split of the atoms in index order, for comparison: equal atom counts
    (upstream's ``np.array_split`` rule) or, given ``work (N,)``, equal work."""
    if work is None:
        base, extra = divmod(num_atoms, size)
        counts = torch.tensor([base + (r < extra) for r in range(size)])
        return torch.repeat_interleave(torch.arange(size), counts)
    thresholds = torch.arange(1, size, dtype=torch.double) * float(work.sum()) / size
    return _assign(torch.arange(num_atoms), work.double(), 0.0, thresholds)


def shared_target_triplets(dst: Tensor, num_atoms: int) -> Tensor:
    """``(E,)`` triplets ``b -> a <- c`` per output edge ``c -> a``: the other edges into ``a``."""
    return (torch.bincount(dst, minlength=num_atoms)[dst] - 1).clamp(min=0)


def atom_work(
    edge_index: Tensor,
    num_atoms: int,
    triplets_per_edge: Tensor | None = None,
    weights: WorkWeights | None = None,
) -> Tensor:
    """``(N,)`` estimated work of each atom: its own, its incoming edges' and their triplets'."""
    dst = edge_index[1]
    in_degree = torch.bincount(dst, minlength=num_atoms)
    if triplets_per_edge is None:
        triplets_per_edge = shared_target_triplets(dst, num_atoms)
    triplets = torch.zeros(num_atoms, dtype=torch.double, device=dst.device)
    triplets.index_add_(0, dst, triplets_per_edge.double())
    weights = weights or WorkWeights()
    return weights.atom + weights.edge * in_degree.double() + weights.triplet * triplets


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


def _local_rows(owner: Tensor, size: int) -> Tensor:
    """Row of each item among the items its owner holds (ascending global id)."""
    n = owner.numel()
    order = torch.argsort(owner * max(n, 1) + torch.arange(n, device=owner.device))
    local = torch.empty_like(owner)
    local[order] = torch.arange(n, device=owner.device) - _starts(owner, size)[owner[order]]
    return local


def _starts(owner: Tensor, size: int) -> Tensor:
    """``(P,)`` first row of each rank's block in a rank-major concatenation."""
    counts = _bincount(owner, size)
    return torch.cumsum(counts, 0) - counts


def build_halo(
    requester: Tensor, item: Tensor, item_owner: Tensor, item_local: Tensor, size: int, rank: int
) -> tuple[Halo, list[int]]:
    """The halo for (requester rank, item) pairs; returns it and every rank's halo size."""
    remote = item_owner[item] != requester
    num_items = max(item_owner.numel(), 1)
    key = torch.unique(requester[remote] * num_items + item[remote])  # sorted: by rank, then id
    req, it = key // num_items, key % num_items
    own = item_owner[it]

    mine = req == rank
    arrival = torch.argsort(own[mine], stable=True)
    sending = own == rank
    halo = Halo(
        send_index=item_local[it[sending]],
        send_counts=_counts(req[sending], size),
        recv_counts=_counts(own[mine], size),
        recv_global=it[mine][arrival],
    )
    return halo, _counts(req, size)


def _slots(num_items: int, owned: Tensor, received: Tensor) -> Tensor:
    """Global id -> row of ``cat([owned, received])``, -1 for items this rank does not hold."""
    slot = torch.full((num_items,), -1, dtype=torch.long, device=owned.device)
    slot[owned] = torch.arange(owned.numel(), device=owned.device)
    slot[received] = torch.arange(received.numel(), device=owned.device) + owned.numel()
    return slot


def _bincount(x: Tensor, size: int) -> Tensor:
    return torch.bincount(x, minlength=size)[:size]


def _counts(x: Tensor, size: int) -> list[int]:
    return _bincount(x, size).tolist()


def _sum_by_rank(values: Tensor, owner: Tensor, size: int) -> list[int]:
    return (
        torch.zeros(size, dtype=torch.long, device=owner.device)
        .index_add_(0, owner, values.long())
        .tolist()
    )
