"""The demo configs through the unmodified `fairchem` CLI, graph-parallel over 2 CPU ranks."""

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


@pytest.mark.parametrize("config", ["gemnet_xl_demo", "dimenetpp_xl_demo"])
def test_train_then_predict_with_graph_parallelism(tiny_dataset, tmp_path, config):
    data = [
        f"--dataset.train.src={tiny_dataset / 's2ef' / 'train'}",
        f"--dataset.val.src={tiny_dataset / 's2ef' / 'val'}",
    ]
    common = ["--config-yml", f"configs/s2ef/{config}.yml", "--num-gpus", "2", "--gp-gpus", "2"]
    log = fairchem("--mode", "train", *common, *data, "--optim.max_epochs=1", run_dir=tmp_path)
    assert "Evaluating on val" in log and "forces_mae" in log
    [checkpoint] = tmp_path.glob("checkpoints/*/checkpoint.pt")

    test_split = f"--dataset.test.src={tiny_dataset / 's2ef' / 'val'}"
    fairchem(
        "--mode",
        "predict",
        *common,
        *data,
        test_split,
        "--checkpoint",
        str(checkpoint),
        run_dir=tmp_path / "predict",
    )
    [predictions] = (tmp_path / "predict").glob("results/*/*.npz")
    with np.load(predictions) as result:
        assert len(set(result["ids"].tolist())) == len(result["ids"]) > 0
        assert np.isfinite(result["forces"]).all()
