"""The two LMDB layouts fairchem users have, and how a sample of either becomes fairchem's.

- ``ocp-graphpar``: what ``ocp-graphpar data`` writes; targets under fairchem 1.x's own names
  (``energy``, ``forces``; IS2RS: ``energy_relaxed``, ``pos_relaxed``). Read as stored.
- ``oc20``: OC20's released LMDBs, preprocessed in 2020-21 with the OCP scripts; targets under
  the names of that time (S2EF: ``y``, ``force``; IS2RE/IS2RS: ``y_init``, ``y_relaxed``,
  ``pos_relaxed``). Renamed on read to fairchem 1.x's names.

A folder's layout is told by its samples' keys. Test splits carry no targets at all; their
layout is :data:`UNLABELLED`, which any split that needs no targets accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)  # the layouts are singletons, compared by identity
class Layout:
    """One way of naming a sample's targets.

    Attributes:
        name: how messages call it.
        markers: stored keys of which any one identifies this layout.
        renames: stored key -> fairchem 1.x key, applied when a sample is read.
        example: the keys a reader expects, for messages.
    """

    name: str
    markers: frozenset[str]
    renames: Mapping[str, str] = field(default_factory=dict)
    example: str = ""

    def fairchem_keys(self, stored: Iterable[str]) -> set[str]:
        """The keys a sample with ``stored`` keys has once read."""
        return {self.renames.get(key, key) for key in stored}


OCP_GRAPHPAR = Layout(
    name="ocp-graphpar",
    markers=frozenset({"energy", "forces", "energy_relaxed"}),
    example="energy, forces (IS2RS: energy_relaxed, pos_relaxed)",
)
OC20_RELEASED = Layout(
    name="OC20 released",
    markers=frozenset({"y", "force", "y_init", "y_relaxed"}),
    renames={"y": "energy", "force": "forces", "y_init": "energy", "y_relaxed": "energy_relaxed"},
    example="y, force (IS2RE/IS2RS: y_init, y_relaxed, pos_relaxed)",
)
UNLABELLED = Layout(name="unlabelled (no targets)", markers=frozenset())

#: Checked in this order: ocp-graphpar samples also store ``y`` (a copy of ``energy``).
LABELLED_LAYOUTS = (OCP_GRAPHPAR, OC20_RELEASED)

#: What every model here reads from a sample.
INPUT_KEYS = ("atomic_numbers", "pos", "cell", "natoms")

#: The energy a sample's ``energy`` target holds, by the dataset option ``energy_target``.
ENERGY_TARGETS = {"frame": "energy", "relaxed": "energy_relaxed"}


def detect_layout(keys: Iterable[str]) -> Layout:
    """The layout of a sample with these stored keys."""
    keys = set(keys)
    for layout in LABELLED_LAYOUTS:
        if keys & layout.markers:
            return layout
    return UNLABELLED


def expected_keys_text() -> str:
    return "; or ".join(f"{layout.name}: {layout.example}" for layout in LABELLED_LAYOUTS)
