"""The user's workflow through the unmodified ``fairchem`` CLI, graph-parallel on CPU ranks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FAIRCHEM = REPO / ".venv" / "bin" / "fairchem"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from helpers.tiny_data import TINY_FRAMES

    from ocp_graphpar.tools.data import make_demo_dataset

    out = tmp_path_factory.mktemp("cli") / "data"  # 2 training, 4 validation systems
    make_demo_dataset(
        out, systems=6, max_steps=6, val_fraction=0.67, progress=False, counts=TINY_FRAMES
    )
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
        "--mode",
        "train",
        "--config-yml",
        config,
        *launch,
        *s2ef_data(data),
        "--optim.max_epochs=1",
        run_dir=run_dir,
    )
    assert "Evaluating on val" in log and "forces_mae" in log
    [checkpoint] = run_dir.glob("checkpoints/*/checkpoint.pt")
    return checkpoint, log


def predict(
    config: str, data: Path, checkpoint: Path, run_dir: Path, *launch: str, only_test: bool = False
) -> dict:
    """Predictions for ``data/s2ef/val`` as the test split; ``only_test``: no other split given."""
    fairchem(
        "--mode",
        "predict",
        "--config-yml",
        config,
        *launch,
        *([] if only_test else s2ef_data(data)),
        f"--dataset.test.src={data / 's2ef' / 'val'}",
        "--checkpoint",
        str(checkpoint),
        "--task.prediction_dtype=float32",
        run_dir=run_dir,
    )
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


@pytest.fixture(scope="module")
def relaxations(tiny_dataset, gemnet_checkpoint, tmp_path_factory) -> tuple[Path, str]:
    """``relaxed_positions.npz`` of the 4 validation systems, relaxed at gp 2, and the log."""
    run_dir = tmp_path_factory.mktemp("relax")
    log = fairchem(
        "--mode",
        "run-relaxations",
        "--config-yml",
        "configs/is2rs/gemnet_xl_demo.yml",
        *ranks(2, 2),
        *s2ef_data(tiny_dataset),
        f"--dataset.relax.src={tiny_dataset / 'is2rs' / 'val'}",
        "--checkpoint",
        str(gemnet_checkpoint),
        "--task.relaxation_steps=10",
        run_dir=run_dir,
    )
    [relaxed] = run_dir.glob("results/*/relaxed_positions.npz")
    return relaxed, log


def test_relaxations_under_gp_write_positions_and_is2rs_metrics(relaxations):
    relaxed, log = relaxations
    assert "positions_average_distance_within_threshold" in log
    assert "energy_mae" in log
    with np.load(relaxed) as result:
        assert len(result["ids"]) == 4 and result["chunk_idx"].size == 3
        assert result["pos"].ndim == 2 and np.isfinite(result["pos"]).all()


def split_by_system(result: dict, rows_key: str, out: Path) -> dict[str, Path]:
    """One fairchem prediction file per OC20 test split: its systems dealt out in turn, each
    file in fairchem's layout (rows concatenated, ``chunk_idx`` = cumsum of rows [:-1])."""
    from ocp_graphpar.tools.export import SPLITS

    systems = [sid.split("_")[0] for sid in result["ids"]]
    rows = np.split(result[rows_key], result["chunk_idx"])
    order = sorted(set(systems))
    files = {}
    for k, split in enumerate(SPLITS):
        mine = [i for i, sid in enumerate(systems) if order.index(sid) % len(SPLITS) == k]
        arrays = {
            "ids": result["ids"][mine],
            rows_key: np.concatenate([rows[i] for i in mine]),
            "chunk_idx": np.cumsum([len(rows[i]) for i in mine])[:-1],
        }
        if "energy" in result:
            arrays["energy"] = result["energy"][mine]
        files[split] = out / split / "predictions.npz"
        files[split].parent.mkdir(parents=True)
        np.savez_compressed(files[split], **arrays)
    return files


@pytest.mark.parametrize("task", ["s2ef", "is2rs"])
def test_leaderboard_files_from_real_predictions_export_and_validate(
    task, tiny_dataset, gemnet_checkpoint, relaxations, tmp_path
):
    from ocp_graphpar.cli import main
    from ocp_graphpar.tools.export import validate_submission

    if task == "s2ef":
        config = "configs/s2ef/gemnet_xl_demo.yml"
        result = predict(config, tiny_dataset, gemnet_checkpoint, tmp_path, *ranks(2, 2))
        files = split_by_system(result, "forces", tmp_path / "splits")
    else:
        with np.load(relaxations[0]) as relaxed:
            files = split_by_system(dict(relaxed), "pos", tmp_path / "splits")
    out = tmp_path / f"{task}_submission.npz"
    flags = [f"--{split.replace('_', '-')}={path}" for split, path in files.items()]
    assert main(["export", task, *flags, "--out", str(out)]) == 0
    assert validate_submission(out, task) == []
    assert main(["validate", str(out), "--task", task]) == 0


def test_data_x_graph_parallel_training_on_four_ranks(tiny_dataset, tmp_path):
    _, log = train("configs/s2ef/gemnet_xl_demo.yml", tiny_dataset, tmp_path, *ranks(4, 2))
    assert "Running in local mode with 4 ranks" in log


def test_dimenetpp_xl_trains_and_predicts_at_gp2(tiny_dataset, tmp_path):
    config = "configs/s2ef/dimenetpp_xl_demo.yml"
    checkpoint, _ = train(config, tiny_dataset, tmp_path / "train", *ranks(2, 2))
    result = predict(config, tiny_dataset, checkpoint, tmp_path / "predict", *ranks(2, 2))
    assert len(set(result["ids"].tolist())) == len(result["ids"]) > 0
    assert np.isfinite(result["forces"]).all()
