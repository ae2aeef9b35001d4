"""S2EF scores of a prediction file against its LMDB, beside the baselines a model must beat.

Baselines, on the same frames and atoms as the scores:

- *zero forces*: predicting no force at all; its force MAE is the mean |force component|.
- *per-element reference energy*: predicting each structure's energy as the sum of fitted
  per-element energies. The data tools store energies with that reference subtracted
  (``linear_reference``), so this baseline predicts 0 and its MAE is the mean |stored energy|.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: Cosines of forces shorter than this (eV/Å) are left out: their direction is noise.
MIN_FORCE_FOR_COSINE = 1e-6


@dataclass(frozen=True)
class S2EFScores:
    """Errors of a model's predictions and of the baselines on ``frames`` frames (free atoms)."""

    frames: int
    energy_mae: float  # eV
    forces_mae: float  # eV/Å, over force components, as fairchem's forces_mae
    forces_cosine: float  # mean over atoms of cos(predicted, target force); NaN if none has one
    zero_force_mae: float  # eV/Å
    reference_energy_mae: float  # eV

    @property
    def forces_over_zero_force(self) -> float:
        return self.forces_mae / self.zero_force_mae

    @property
    def energy_over_reference(self) -> float:
        return self.energy_mae / self.reference_energy_mae

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "forces_over_zero_force": self.forces_over_zero_force,
            "energy_over_reference": self.energy_over_reference,
        }


def _cosines(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(predicted, axis=1) * np.linalg.norm(target, axis=1)
    keep = norms > MIN_FORCE_FOR_COSINE**2
    return (predicted * target).sum(axis=1)[keep] / norms[keep]


def score_s2ef_predictions(
    predictions: str | os.PathLike, lmdb_dir: str | os.PathLike
) -> S2EFScores:
    """Scores of an S2EF prediction file (fairchem's ``--mode predict`` output, forces of free
    atoms) on the LMDB folder it predicted, every frame of which it must hold."""
    from fairchem.core.datasets import LmdbDataset

    with np.load(Path(predictions)) as loaded:
        ids, energy = loaded["ids"], loaded["energy"].reshape(-1)
        forces = np.split(loaded["forces"], loaded["chunk_idx"])
    row = {str(i): k for k, i in enumerate(ids)}
    dataset = LmdbDataset({"src": str(lmdb_dir)})
    energy_errors, stored_energies, force_errors, stored_forces, cosines = [], [], [], [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        k = row[f"{int(sample.sid)}_{int(sample.fid)}"]
        target = sample.forces.numpy()[(sample.fixed == 0).numpy()]
        energy_errors.append(abs(float(energy[k]) - float(sample.energy)))
        stored_energies.append(abs(float(sample.energy)))
        force_errors.append(np.abs(forces[k] - target).ravel())
        stored_forces.append(np.abs(target).ravel())
        cosines.append(_cosines(forces[k], target))
    cosine = np.concatenate(cosines)  # empty when every predicted force is zero: no direction
    return S2EFScores(
        frames=len(dataset),
        energy_mae=float(np.mean(energy_errors)),
        forces_mae=float(np.concatenate(force_errors).mean()),
        forces_cosine=float(cosine.mean()) if cosine.size else float("nan"),
        zero_force_mae=float(np.concatenate(stored_forces).mean()),
        reference_energy_mae=float(np.mean(stored_energies)),
    )
