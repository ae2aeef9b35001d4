"""The user's workflow through the unmodified ``fairchem`` CLI, graph-parallel on CPU ranks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FAIRCHEM = REPO / ".venv" / "bin" / "fairchem"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from ocp_graphpar.tools.data import make_demo_dataset

    out = tmp_path_factory.mktemp("cli") / "data"
    make_demo_dataset(out, systems=3, max_steps=6, val_fraction=0.34, progress=False)
    return out


def fairchem(*args: str, run_dir: Path) -> str:
    command = [str(FAIRCHEM), *args, "--cpu", "--run-dir", str(run_dir)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr + done.stdout


def ranks(num_gpus: int, gp_gpus: int | None = None) -> list[str]:
    return ["--num-gpus", str(num_gpus)] + ([] if gp_gpus is None else ["--gp-gpus", str(gp_gpus)])


def s2ef_data(data: Path) -> list[str]:
    return [
        f"--dataset.train.src={data / 's2ef' / 'train'}",
        f"--dataset.val.src={data / 's2ef' / 'val'}",
    ]


def train(config: str, data: Path, run_dir: Path, *launch: str) -> tuple[Path, str]:
    log = fairchem(
        "--mode", "train", "--config-yml", config, *launch, *s2ef_data(data),
        "--optim.max_epochs=1", run_dir=run_dir,
    )  # fmt: skip
    assert "Evaluating on val" in log and "forces_mae" in log
    [checkpoint] = run_dir.glob("checkpoints/*/checkpoint.pt")
    return checkpoint, log


def predict(config: str, data: Path, checkpoint: Path, run_dir: Path, *launch: str) -> dict:
    fairchem(
        "--mode", "predict", "--config-yml", config, *launch, *s2ef_data(data),
        f"--dataset.test.src={data / 's2ef' / 'val'}", "--checkpoint", str(checkpoint),
        "--task.prediction_dtype=float32", run_dir=run_dir,
    )  # fmt: skip
    [predictions] = run_dir.glob("results/*/*_predictions.npz")
    with np.load(predictions) as result:
        return dict(result)


@pytest.fixture(scope="module")
def gemnet_checkpoint(tiny_dataset, tmp_path_factory):
    """GemNet-XL (demo widths) trained for one epoch at gp 2; scale factors auto-fitted."""
    run_dir = tmp_path_factory.mktemp("gemnet_train")
    checkpoint, log = train("configs/s2ef/gemnet_xl_demo.yml", tiny_dataset, run_dir, *ranks(2, 2))
    assert "fitted 17 GemNet-XL scale factors on the first batch" in log
    return checkpoint


def test_predictions_agree_between_gp1_and_gp2(tiny_dataset, gemnet_checkpoint, tmp_path):
    config = "configs/s2ef/gemnet_xl_demo.yml"
    gp2 = predict(config, tiny_dataset, gemnet_checkpoint, tmp_path / "gp2", *ranks(2, 2))
    gp1 = predict(config, tiny_dataset, gemnet_checkpoint, tmp_path / "gp1", *ranks(1))
    assert len(set(gp2["ids"].tolist())) == len(gp2["ids"]) > 0
    np.testing.assert_array_equal(gp2["ids"], gp1["ids"])
    np.testing.assert_array_equal(gp2["chunk_idx"], gp1["chunk_idx"])
    for key in ("energy", "forces"):
        assert np.isfinite(gp2[key]).all()
        np.testing.assert_allclose(gp2[key], gp1[key], rtol=1e-4, atol=1e-5)


def test_relaxations_under_gp_write_positions_and_is2rs_metrics(
    tiny_dataset, gemnet_checkpoint, tmp_path
):
    log = fairchem(
        "--mode", "run-relaxations", "--config-yml", "configs/is2rs/gemnet_xl_demo.yml",
        *ranks(2, 2), *s2ef_data(tiny_dataset),
        f"--dataset.relax.src={tiny_dataset / 'is2rs' / 'val'}",
        "--checkpoint", str(gemnet_checkpoint), "--task.relaxation_steps=10",
        run_dir=tmp_path,
    )  # fmt: skip
    assert "positions_average_distance_within_threshold" in log
    assert "energy_mae" in log
    [relaxed] = tmp_path.glob("results/*/relaxed_positions.npz")
    with np.load(relaxed) as result:
        assert len(result["ids"]) == 1 and result["chunk_idx"].size == 0
        assert result["pos"].ndim == 2 and np.isfinite(result["pos"]).all()


def test_data_x_graph_parallel_training_on_four_ranks(tiny_dataset, tmp_path):
    _, log = train("configs/s2ef/gemnet_xl_demo.yml", tiny_dataset, tmp_path, *ranks(4, 2))
    assert "Running in local mode with 4 ranks" in log


def test_dimenetpp_xl_trains_and_predicts_at_gp2(tiny_dataset, tmp_path):
    config = "configs/s2ef/dimenetpp_xl_demo.yml"
    checkpoint, _ = train(config, tiny_dataset, tmp_path / "train", *ranks(2, 2))
    result = predict(config, tiny_dataset, checkpoint, tmp_path / "predict", *ranks(2, 2))
    assert len(set(result["ids"].tolist())) == len(result["ids"]) > 0
    assert np.isfinite(result["forces"]).all()
