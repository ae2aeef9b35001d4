"""Shapes of a model's parameters and peak activations, as formulas in its widths and graph size.

Building a 300M-1B parameter model to ask how much memory it needs would cost the memory in
question, so the planner traces a *probe*: the same architecture (same blocks, layers, bases)
with every width replaced by a distinct prime, run for one training step on a small slab. Each
dimension of each parameter and of each tensor live at a moment that can hold the step's peak
(an allocation followed by a release) is then read back as a symbol: a width (a prime only that
width has), a graph size (atoms, edges, triplets, the longest triplet list of an edge), a
product of two of those, or a constant. Evaluating the symbols at the real widths and at any
graph size gives the real model's counts; the largest moment there is the real step's peak.
The model's settings stay as given, so a probe with ``activation_checkpointing`` traces what a
checkpointed step keeps and recomputes. With ``inference`` the probe runs one prediction instead
(energy and forces under ``torch.no_grad()``, the model in eval mode, no weight gradients).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ocp_graphpar.measure.planner.formulas import (
    HALF,
    Formula,
    Peak,
    Term,
    read_phase,
    read_tensors,
)
from ocp_graphpar.models.catalog import MODELS, model_spec

# The model arguments that are widths: free to change in the probe without changing the
# computation's structure. Everything else (blocks, layers, spherical order) stays as given.
WIDTHS = {family: spec.widths for family, spec in MODELS.items()}
_PRIMES = [p for p in range(29, 2000) if all(p % q for q in range(2, int(p**0.5) + 1))]


@dataclass(frozen=True)
class Trace:
    family: str
    parameters: Formula  # element counts
    activations: Peak  # bytes at the peak of a training step (or of a prediction)
    unresolved: int  # dimensions read as constants although they were not small


def family_of(model_name: str) -> str:
    """The family of the model a config names."""
    return model_spec(model_name).family


def probe_batch(radius: float = 3.2, max_neighbors: int = 14):
    """Two small slabs with an adsorbate, and their nearest-neighbour graph: every kind of
    edge and triplet (periodic images included), on few of them, so the probe runs fast."""
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.singlepoint import SinglePointCalculator
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    structures = []
    for size, adsorbate in (((2, 2, 3), "O"), ((3, 2, 2), "H")):
        slab = fcc111("Cu", size=size, vacuum=6.0)
        add_adsorbate(slab, adsorbate, 1.8, "fcc")
        slab.set_tags([1] * (len(slab) - 1) + [2])
        slab.calc = SinglePointCalculator(slab, energy=0.0, forces=slab.positions * 0.0)
        structures.append(slab)
    a2g = AtomsToGraphs(
        max_neigh=max_neighbors, radius=radius, r_energy=True, r_forces=True, r_edges=True
    )
    return data_list_collater([a2g.convert(s) for s in structures], otf_graph=False)


def model_graph_size(family: str, model: torch.nn.Module, batch) -> dict[str, int]:
    """Atoms, edges, triplets and (GemNet) the longest triplet list of an edge, as the model
    itself builds its graph from ``batch`` (GemNet-T drops edges without a reverse)."""
    return MODELS[family].graph_size(model, batch.clone())


def precomputed_graph(family: str) -> dict:
    """Model settings for a batch that carries its graph: the model reads the batch's edges
    (upstream GemNet-T then accepts only its default ``max_neighbors``, an assertion, whatever
    a config trains with; the demo config: 20)."""
    return dict(MODELS[family].precomputed_graph)


def trace_model(family: str, model_config: dict, *, inference: bool = False) -> Trace:
    """Trace the probe of ``model_config`` (one process, one training step, a few seconds);
    with ``inference``, one prediction (:func:`.measure.inference_call` of the bench)."""
    from ocp_graphpar.measure.contenders import build_contender
    from ocp_graphpar.measure.memory import LiveTensorBytes
    from ocp_graphpar.measure.steps import inference_call, training_step

    config = {**model_config, **precomputed_graph(family)}
    batch = probe_batch()
    with _symbolic_bases_computed_once():
        narrow = build_contender("ours", family, {**config, **_narrow(family, config)})
        constants = {int(d) for p in narrow.parameters() for d in p.shape}
        graph = model_graph_size(family, narrow, batch)  # widths do not change the graph
        markers = _markers(WIDTHS[family], config, constants | set(graph.values()))
        model = build_contender("ours", family, {**config, **markers})
    if inference:
        with LiveTensorBytes(record_shapes=True) as tracker:
            inference_call(model.eval(), batch)
    else:
        model.train()
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
        with LiveTensorBytes(record_shapes=True) as tracker:
            training_step(model, batch, after_forward=tracker.mark_phase)
    widths = {value: ((name,),) for name, value in markers.items()}
    sizes = {value: ((name,),) for name, value in graph.items() if value > 0}
    sizes.setdefault(int(batch.edge_index.shape[1]), (("edges",),))  # the input graph's edges
    # Half a width is read only where some parameter has it (a layer narrowing a width by
    # half): elsewhere a constant could equal half a marker.
    dims = {int(d) for p in model.parameters() for d in p.shape}
    halved = {value: term for value, term in widths.items() if value // 2 in dims}
    readings = _readings(widths, sizes, halved=halved)
    parameters, missed_p = read_tensors(((p.shape, 1) for p in model.parameters()), readings)
    phases = [read_phase(phase, readings) for phase in tracker.phase_moments()]
    missed_a = max(missed for _, missed in phases)
    activations = Peak(tuple(formula for formula, _ in phases))
    return Trace(family, parameters, activations, missed_p + missed_a)


@contextlib.contextmanager
def _symbolic_bases_computed_once() -> Iterator[None]:
    """DimeNet++'s bases are derived with sympy when a model is built (tens of seconds); the
    probe builds two models with the same bases, so derive them once."""
    from torch_geometric.nn.models import dimenet_utils

    originals = {name: getattr(dimenet_utils, name) for name in ("bessel_basis", "real_sph_harm")}
    for name, original in originals.items():
        setattr(dimenet_utils, name, functools.lru_cache(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(dimenet_utils, name, original)


def _narrow(family: str, config: dict) -> dict[str, int]:
    """Every width 2: the dimensions of this model's parameters that are not 2 follow no width
    (element tables, basis sizes)."""
    return {name: 2 for name in WIDTHS[family] if name in config}


def _markers(names: tuple[str, ...], config: dict, taken: set[int]) -> dict[str, int]:
    """A prime per width present in ``config``, the smallest such that no sum of up to three of
    them, nor any product of two, equals another such value or a ``taken`` graph size."""
    chosen: list[int] = []
    present = [name for name in names if name in config]
    for prime in _PRIMES:
        if len(chosen) == len(present):
            break
        if _distinguishable([*chosen, prime], taken):
            chosen.append(prime)
    return dict(zip(present, chosen))


def _distinguishable(values: list[int], taken: set[int]) -> bool:
    seen = set(taken)
    combos = [(v,) for v in values]
    combos += list(itertools.combinations_with_replacement(values, 2))
    combos += list(itertools.combinations_with_replacement(values, 3))
    for combo in combos:
        for value in {sum(combo), math.prod(combo) if len(combo) == 2 else sum(combo)}:
            if value in seen:
                return False
            seen.add(value)
    return True


def _readings(
    widths: dict[int, Term], sizes: dict[int, Term], *, halved: dict[int, Term]
) -> dict[int, Term]:
    """What each value a dimension may take means, the simplest reading first: a width or a
    graph size, a product of two (a flattened tensor), a sum of two or three widths (a
    concatenation), and half a width (or twice that) for the ``halved`` widths."""
    singles = {**widths, **sizes}
    readings: dict[int, Term] = {}
    for (a, ta), (b, tb) in itertools.combinations_with_replacement(singles.items(), 2):
        readings.setdefault(a * b, ((ta[0] + tb[0]),))
    for count in (3, 2):
        for combo in itertools.combinations_with_replacement(widths.items(), count):
            value = sum(v for v, _ in combo)
            readings.setdefault(value, tuple(t[0] for _, t in combo))
    for value, term in halved.items():
        half = term[0][0] + HALF
        readings.setdefault(value // 2, ((half,),))
        readings.setdefault(2 * (value // 2), ((half,), (half,)))
    return {**readings, **singles}
