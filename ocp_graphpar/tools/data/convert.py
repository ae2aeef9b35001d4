"""From systems to a dataset folder: split by system, optional linear referencing, layout.

Layout written under ``DIR``::

    DIR/s2ef/train/{data.lmdb,metadata.npz}   every frame of the training systems
    DIR/s2ef/val/{data.lmdb,metadata.npz}     every frame of the validation systems
    DIR/is2rs/val/{data.lmdb,metadata.npz}    one initial structure per validation system
    DIR/linear_reference.{json,npz}           only with linear_reference=True
    DIR/dataset.json                          manifest: options, splits, systems

Splits with no systems (e.g. ``val_fraction=0``) are not written.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from ase.symbols import Symbols
from torch_geometric.data import Data

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.data.lmdb_writer import (
    check_output_target,
    staged_output,
    write_lmdb,
    write_manifest,
)
from ocp_graphpar.tools.data.reading import read_trajectories
from ocp_graphpar.tools.data.samples import System, is2rs_sample, s2ef_sample

N_ELEMENTS = 119  # index = atomic number, 0 unused, as fairchem's element_references
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- splitting


def check_val_fraction(val_fraction: float) -> None:
    """Refuse a validation fraction outside [0, 1): training needs at least one system."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserFacingError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}.")


def split_systems(
    names: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split system names into (train, val), both sorted.

    Deterministic for a set of names and a seed, whatever order the names come in. With two or
    more systems and ``val_fraction > 0`` both splits get at least one system.
    """
    check_val_fraction(val_fraction)
    ordered = sorted(names)
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0:
        if len(ordered) < 2:
            raise UserFacingError(
                f"cannot split {len(ordered)} system into train and validation. Pass more "
                "trajectory files, or --val-fraction 0 to put everything into train."
            )
        n_val = min(max(n_val, 1), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    val = sorted(ordered[i] for i in order[:n_val])
    train = sorted(ordered[i] for i in order[n_val:])
    return train, val


def covering_split_seed(
    labels: Mapping[str, set], val_fraction: float = 0.2, max_tries: int = 10_000
) -> int | None:
    """The first split seed whose validation systems carry only labels (elements, metals,
    adsorbates, ...) that some training system also carries; ``None`` if none of ``max_tries``
    seeds does. ``labels`` maps each system name to its labels."""
    for seed in range(max_tries):
        train, val = split_systems(list(labels), val_fraction, seed)
        seen = set().union(*(labels[name] for name in train))
        if all(labels[name] <= seen for name in val):
            return seed
    return None


def in_domain_split_seed(
    systems: Sequence[System], val_fraction: float = 0.2, max_tries: int = 10_000
) -> int:
    """The first split seed under which every validation system's chemistry was seen in
    training, as in OC20's in-domain split: its set of elements (adsorbate and catalyst
    together) is some training system's, or, when no split of these systems allows that, each
    of its elements occurs in training. A model cannot learn an element, or an adsorbate on a
    catalyst, it never saw, so a validation set without them measures little but that."""
    compositions = {s.name: {frozenset(s.numbers.tolist())} for s in systems}
    seed = covering_split_seed(compositions, val_fraction, max_tries)
    if seed is not None:
        return seed
    elements = {s.name: set(s.numbers.tolist()) for s in systems}
    seed = covering_split_seed(elements, val_fraction, max_tries)
    if seed is None:
        raise UserFacingError(
            f"no split of these {len(systems)} systems keeps every validation element in "
            f"training (tried {max_tries} seeds). Add systems that share their elements, or "
            "lower the validation fraction."
        )
    return seed


def assign_sids(names: Sequence[str]) -> dict[str, int]:
    """Integer system ids: the first run of digits in each name (``random1000100`` -> 1000100).

    When a name has no digits or two names give the same number, every system gets its index in
    sorted name order instead, so ids are always unique.
    """
    parsed = {}
    for name in names:
        match = re.search(r"\d+", name)
        parsed[name] = int(match.group()) if match else None
    values = list(parsed.values())
    if None in values or len(set(values)) != len(values):
        return {name: index for index, name in enumerate(sorted(names))}
    return parsed  # type: ignore[return-value]


# ----------------------------------------------------------------------------- referencing


def composition_matrix(numbers_list: Sequence[np.ndarray]) -> np.ndarray:
    """(S, 119) element counts, one row per structure."""
    return np.stack([np.bincount(n, minlength=N_ELEMENTS)[:N_ELEMENTS] for n in numbers_list])


@dataclass
class LinearReference:
    """Per-element energies (eV) from a least-squares fit ``E ~ sum_Z count_Z * coef_Z``.

    ``coefficients``: (119,) float64 indexed by atomic number; elements absent from the fit
    are 0, so structures containing them are only partly referenced.
    """

    coefficients: np.ndarray
    fitted_elements: list[int]
    n_frames: int
    rmse: float

    def offset(self, numbers: np.ndarray) -> float:
        """The reference energy of one structure: sum of its atoms' coefficients (eV)."""
        return float(self.coefficients[np.asarray(numbers, dtype=np.int64)].sum())

    def save(self, folder: Path) -> list[Path]:
        """Write ``linear_reference.json`` (readable) and ``linear_reference.npz`` (fairchem).

        The npz holds ``element_references`` (119,), the layout fairchem's
        ``create_element_references(file=...)`` loads.
        """
        as_json = {
            "description": "stored energy = raw energy - sum of coefficients_eV over atoms",
            "fit": "least squares on every frame of the training systems",
            "n_frames": self.n_frames,
            "rmse_eV": self.rmse,
            "coefficients_eV": {
                chemical_symbols[z]: float(self.coefficients[z]) for z in self.fitted_elements
            },
        }
        json_path, npz_path = folder / "linear_reference.json", folder / "linear_reference.npz"
        json_path.write_text(json.dumps(as_json, indent=2) + "\n")
        np.savez(npz_path, element_references=self.coefficients)
        return [json_path, npz_path]


def fit_linear_reference(systems: Sequence[System]) -> LinearReference:
    """Fit per-element energies on every frame of ``systems`` (pass the training systems only).

    All frames of a system share its composition, so the fit is usually rank-deficient; the
    minimum-norm least-squares solution is used, as fairchem's own ``fit_linear_references``.
    """
    counts = composition_matrix([s.numbers for s in systems])
    frames_per_system = np.array([s.n_frames for s in systems])
    design = np.repeat(counts, frames_per_system, axis=0).astype(np.float64)
    energies = np.concatenate([s.energies for s in systems])
    present = np.flatnonzero(design.sum(axis=0))
    solution = np.linalg.lstsq(design[:, present], energies, rcond=None)[0]
    coefficients = np.zeros(N_ELEMENTS)
    coefficients[present] = solution
    residual = energies - design @ coefficients
    return LinearReference(
        coefficients=coefficients,
        fitted_elements=[int(z) for z in present],
        n_frames=int(energies.size),
        rmse=float(np.sqrt(np.mean(residual**2))),
    )


# ----------------------------------------------------------------------------- writing


@dataclass
class SplitSummary:
    """What one LMDB folder holds."""

    path: Path
    systems: int
    samples: int


@dataclass
class DatasetSummary:
    """What :func:`systems_to_lmdbs` wrote, for printing and for tests."""

    out: Path
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    train_systems: list[str] = field(default_factory=list)
    val_systems: list[str] = field(default_factory=list)
    linear_reference: LinearReference | None = None
    derived_tags: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        """A few lines: samples and systems per split, and where everything is."""
        lines = [f"wrote {self.out} in {self.seconds:.1f} s"]
        for name, split in self.splits.items():
            lines.append(
                f"  {name:<10} {split.samples:>7} samples from {split.systems:>4} system(s)  "
                f"{split.path}"
            )
        if self.linear_reference is not None:
            lines.append(
                f"  energies referenced per element (fit on {self.linear_reference.n_frames} "
                f"train frames, rmse {self.linear_reference.rmse:.3f} eV): "
                f"{self.out / 'linear_reference.json'}"
            )
        given = len(self.train_systems) + len(self.val_systems) - self.derived_tags
        lines.append(
            f"  OC20 tags (0 fixed slab, 1 free slab, 2 adsorbate): {self.derived_tags} system(s) "
            f"derived, {given} as given in the input"
        )
        return "\n".join(lines)


def _s2ef_samples(
    systems: Sequence[System], sids: dict[str, int], offsets: dict[str, float]
) -> Iterator[Data]:
    for system in systems:
        for frame in range(system.n_frames):
            yield s2ef_sample(system, frame, sids[system.name], offsets[system.name])


def _is2rs_samples(
    systems: Sequence[System], sids: dict[str, int], offsets: dict[str, float]
) -> Iterator[Data]:
    for system in systems:
        yield is2rs_sample(system, sids[system.name], offsets[system.name])


def _planned_splits(
    train: list[System], val: list[System], sids: dict[str, int], offsets: dict[str, float]
) -> list[tuple[str, list[System], int, Iterator[Data]]]:
    """(relative folder, systems, sample count, lazy samples) for every non-empty split."""
    plan = []
    if train:
        frames = sum(s.n_frames for s in train)
        plan.append(("s2ef/train", train, frames, _s2ef_samples(train, sids, offsets)))
    if val:
        frames = sum(s.n_frames for s in val)
        plan.append(("s2ef/val", val, frames, _s2ef_samples(val, sids, offsets)))
        plan.append(("is2rs/val", val, len(val), _is2rs_samples(val, sids, offsets)))
    return plan


def systems_to_lmdbs(
    systems: Sequence[System],
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    linear_reference: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    origin: str = "systems_to_lmdbs",
) -> DatasetSummary:
    """Split ``systems`` by system and write the dataset folder ``out`` (layout: module doc).

    Energies are stored as given unless ``linear_reference``; then per-element energies are fit
    on the training frames only, saved as ``out/linear_reference.{json,npz}``, and subtracted
    from every stored energy (``energy``, ``y``, ``y_init``, ``y_relaxed``, ``energy_relaxed``).
    ``out`` appears only once complete; it must not exist unless ``overwrite``.
    """
    started = time.perf_counter()
    if not systems:
        raise UserFacingError("no systems to write. Pass at least one trajectory.")
    train_names, val_names = split_systems([s.name for s in systems], val_fraction, seed)
    if len(set(train_names) | set(val_names)) != len(systems):
        raise UserFacingError("two systems share a name; system names must be unique.")
    by_name = {s.name: s for s in systems}
    train = [by_name[n] for n in train_names]
    val = [by_name[n] for n in val_names]
    sids = assign_sids(list(by_name))
    reference = fit_linear_reference(train) if linear_reference else None
    offsets = {n: reference.offset(s.numbers) if reference else 0.0 for n, s in by_name.items()}

    summary = DatasetSummary(out=Path(out).expanduser().absolute(), linear_reference=reference)
    summary.train_systems, summary.val_systems = train_names, val_names
    summary.derived_tags = sum(not s.tags_from_file for s in systems)
    with staged_output(out, overwrite) as staging:
        for relative, members, count, samples in _planned_splits(train, val, sids, offsets):
            write_lmdb(staging / relative, samples, total=count, desc=relative, progress=progress)
            summary.splits[relative] = SplitSummary(summary.out / relative, len(members), count)
        if reference is not None:
            reference.save(staging)
        write_manifest(staging, _manifest(summary, by_name, sids, val_fraction, seed, origin))
    summary.seconds = time.perf_counter() - started
    return summary


def _manifest(
    summary: DatasetSummary,
    systems: dict[str, System],
    sids: dict[str, int],
    val_fraction: float,
    seed: int,
    origin: str,
) -> dict:
    val = set(summary.val_systems)
    return {
        "format_version": FORMAT_VERSION,
        "written_by": origin,
        "options": {
            "val_fraction": val_fraction,
            "seed": seed,
            "linear_reference": summary.linear_reference is not None,
        },
        "splits": {
            name: {"path": name, "systems": s.systems, "samples": s.samples}
            for name, s in summary.splits.items()
        },
        "systems": [
            {
                "name": name,
                "sid": sids[name],
                "split": "val" if name in val else "train",
                "source": system.source,
                "natoms": system.n_atoms,
                "frames": system.n_frames,
                "formula": _formula(system.numbers),
                "tags": "file" if system.tags_from_file else "derived",
            }
            for name, system in sorted(systems.items())
        ],
    }


def _formula(numbers: np.ndarray) -> str:
    return Symbols(numbers).get_chemical_formula()


def trajectories_to_lmdbs(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    linear_reference: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetSummary:
    """ASE trajectory files (one relaxation each; folders give their ``*.traj``) to LMDBs.

    Reads and checks every file, then writes as :func:`systems_to_lmdbs`. The output target is
    checked first so a wrong ``--out`` fails before minutes of reading.
    """
    started = time.perf_counter()
    check_output_target(out, overwrite)
    check_val_fraction(val_fraction)
    systems = read_trajectories(paths, progress=progress)
    summary = systems_to_lmdbs(
        systems,
        out,
        val_fraction=val_fraction,
        seed=seed,
        linear_reference=linear_reference,
        overwrite=overwrite,
        progress=progress,
        origin="ocp-graphpar data from-traj",
    )
    summary.seconds = time.perf_counter() - started  # reading included
    return summary
