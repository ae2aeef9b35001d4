"""Scores of S2EF prediction files beside their baselines (``ocp_graphpar.tools.report``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny_data import TINY_FRAMES

from ocp_graphpar.tools.data import make_demo_dataset
from ocp_graphpar.tools.report import score_s2ef_predictions


@pytest.fixture(scope="module")
def val_frames(tmp_path_factory):
    """Validation frames of a small referenced demo set, read back as fairchem reads them."""
    from fairchem.core.datasets import LmdbDataset

    out = tmp_path_factory.mktemp("scores") / "data"
    make_demo_dataset(
        out,
        systems=3,
        max_steps=4,
        val_fraction=0.34,
        linear_reference=True,
        counts=TINY_FRAMES,
        progress=False,
    )
    dataset = LmdbDataset({"src": str(out / "s2ef" / "val")})
    return out / "s2ef" / "val", [dataset[i] for i in range(len(dataset))]


def _prediction_file(path, samples, energy, forces) -> str:
    """A file in fairchem's ``--mode predict`` layout (forces of free atoms, rows stacked)."""
    per_frame = [forces(s)[(s.fixed == 0).numpy()] for s in samples]
    np.savez(
        path,
        ids=np.array([f"{int(s.sid)}_{int(s.fid)}" for s in samples]),
        energy=np.array([energy(s) for s in samples]),
        forces=np.concatenate(per_frame),
        chunk_idx=np.cumsum([len(f) for f in per_frame])[:-1],
    )
    return path


def test_perfect_and_zero_predictions_score_as_they_should(val_frames, tmp_path):
    folder, samples = val_frames
    perfect = score_s2ef_predictions(
        _prediction_file(
            tmp_path / "perfect.npz", samples, lambda s: float(s.energy), lambda s: s.forces.numpy()
        ),
        folder,
    )
    assert perfect.frames == len(samples)
    assert perfect.energy_mae == pytest.approx(0, abs=1e-6)
    assert perfect.forces_mae == pytest.approx(0, abs=1e-6)
    assert perfect.forces_cosine == pytest.approx(1)
    zero = score_s2ef_predictions(
        _prediction_file(
            tmp_path / "zero.npz", samples, lambda s: 0.0, lambda s: 0 * s.forces.numpy()
        ),
        folder,
    )
    assert zero.forces_over_zero_force == pytest.approx(1)
    assert zero.energy_over_reference == pytest.approx(1)
    assert zero.zero_force_mae == perfect.zero_force_mae > 0.05
    flipped = score_s2ef_predictions(
        _prediction_file(
            tmp_path / "flipped.npz", samples, lambda s: 0.0, lambda s: -s.forces.numpy()
        ),
        folder,
    )
    assert flipped.forces_cosine == pytest.approx(-1)
    assert flipped.forces_over_zero_force == pytest.approx(2)
