"""Formulas in a model's widths and graph size: what :mod:`.trace` reads a probe's tensors as.

A dimension is a :data:`Term`, a sum of products of symbols (widths, graph sizes, half widths);
a tensor's bytes are its element size times its dimensions; a :class:`Formula` sums tensors, a
:class:`Moments` keeps the moments of one phase of a step that can hold its peak, and a
:class:`Peak` takes the largest over the phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Monomial = tuple[str, ...]  # symbols multiplied together
Term = tuple[Monomial, ...]  # monomials added together: one dimension


@dataclass(frozen=True)
class Formula:
    """Bytes (or elements) as a sum over tensors of ``element_size * prod(dims)``."""

    tensors: tuple[tuple[int, tuple[Term | int, ...]], ...]

    def evaluate(self, values: dict[str, float]) -> float:
        total = 0.0
        for element_size, dims in self.tensors:
            size = float(element_size)
            for dim in dims:
                size *= dim if isinstance(dim, int) else _value(dim, values)
            total += size
        return total


#: Suffix of a symbol ``width//2``: half a width, rounded down, as a layer that narrows a width
#: by half has it.
HALF = "//2"


def _value(term: Term, values: dict[str, float]) -> float:
    return sum(math.prod(_symbol(symbol, values) for symbol in monomial) for monomial in term)


def _symbol(symbol: str, values: dict[str, float]) -> float:
    if symbol.endswith(HALF):
        return values[symbol[: -len(HALF)]] // 2
    return values[symbol]


@dataclass(frozen=True)
class Moments:
    """Bytes live at the moments of one phase of the probe's step where an allocation was
    followed by a release, one formula each (those that another holds entirely are dropped).
    The step's peak at any sizes is one of these moments (the same operators run in the same
    order), but which one depends on the sizes: with activation checkpointing the backward
    pass peaks while recomputing a triplet-heavy block on a real graph and an edge-heavy one on
    the small probe, so each is evaluated."""

    formulas: tuple[Formula, ...]

    def evaluate(self, values: dict[str, float]) -> float:
        return max((formula.evaluate(values) for formula in self.formulas), default=0.0)


@dataclass(frozen=True)
class Peak:
    """Bytes at a training step's peak: the largest over the phases of the probe's step
    (forward, then loss and backward; a prediction is one phase) of what was live at each
    phase's candidate moments."""

    phases: tuple[Moments, ...]

    def evaluate(self, values: dict[str, float]) -> float:
        return max(phase.evaluate(values) for phase in self.phases)


def read_tensors(shapes, readings: dict[int, Term]) -> tuple[Formula, int]:
    """Tensors of ``(shape, element_size)`` with each dimension read through ``readings`` (a
    value with no reading stays a constant), and the number of unresolved dimensions: constants
    too large to be a model's fixed size."""
    tensors, unresolved = [], 0
    for shape, element_size in shapes:
        dims = tuple(readings.get(int(dim), int(dim)) for dim in shape)
        unresolved += sum(isinstance(d, int) and d > 10 for d in dims)
        tensors.append((element_size, dims))
    return Formula(tuple(tensors)), unresolved


Polynomial = dict[Monomial, int]  # bytes: coefficient of each product of symbols


def read_phase(
    phase: list[dict[tuple[tuple[int, ...], int], int]], readings: dict[int, Term]
) -> tuple[Moments, int]:
    """The moments of one phase of a step (each the count of live tensors of each shape and
    element size) read through ``readings``: each moment's live tensors as one polynomial in the symbols; a moment whose every
    coefficient another moment matches or exceeds can never be the larger (all symbols are
    positive), so only the others are kept. Also the number of unresolved dimensions."""
    polynomials: dict[tuple[tuple[int, ...], int], Polynomial] = {}
    unresolved = 0
    candidates: dict[frozenset, tuple[int, Polynomial]] = {}
    for moment in phase:
        total: Polynomial = {}
        probe_bytes = 0
        for kind, count in moment.items():
            if kind not in polynomials:
                polynomials[kind], missed = _polynomial(kind, readings)
                unresolved += missed
            for monomial, coefficient in polynomials[kind].items():
                total[monomial] = total.get(monomial, 0) + count * coefficient
            probe_bytes += count * kind[1] * math.prod(kind[0])
        candidates.setdefault(frozenset(total.items()), (probe_bytes, total))
    kept: list[Polynomial] = []
    # a moment's dominators hold at least its bytes in the probe: they come first
    for _, polynomial in sorted(candidates.values(), key=lambda c: -c[0]):
        if not any(all(c <= other.get(m, 0) for m, c in polynomial.items()) for other in kept):
            kept.append(polynomial)
    formulas = tuple(
        Formula(tuple((coefficient, ((monomial,),)) for monomial, coefficient in p.items()))
        for p in kept
    )
    return Moments(formulas), unresolved


def _polynomial(
    kind: tuple[tuple[int, ...], int], readings: dict[int, Term]
) -> tuple[Polynomial, int]:
    """A tensor's bytes, ``element_size * prod(dims)``, expanded into monomials."""
    shape, element_size = kind
    polynomial: Polynomial = {(): element_size}
    unresolved = 0
    for dim in shape:
        term = readings.get(int(dim), int(dim))
        if isinstance(term, int):
            unresolved += term > 10
            polynomial = {m: c * term for m, c in polynomial.items()}
            continue
        expanded: Polynomial = {}
        for monomial, coefficient in polynomial.items():
            for factor in term:
                key = tuple(sorted(monomial + factor))
                expanded[key] = expanded.get(key, 0) + coefficient
        polynomial = expanded
    return polynomial, unresolved
