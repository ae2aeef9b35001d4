"""OC20's released layout through the unmodified ``fairchem`` CLI at gp 2: train, predict with
only a test split, relax with only a relax split; bad folders stop before any rank starts; the
checkpoint as fairchem's ASE calculator."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import torch
from helpers.oc20 import oc20_atoms, require_oc20_mini
from helpers.released_layout import write_released_dataset
from test_fairchem_cli import FAIRCHEM, REPO, fairchem, predict, ranks, train
from test_oc20_layouts import BAD, TRAIN, VAL, bad_folder

GEMNET = "configs/s2ef/gemnet_xl_demo.yml"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    require_oc20_mini()
    return write_released_dataset(
        tmp_path_factory.mktemp("cli_released") / "oc20", train=TRAIN, val=VAL
    )


@pytest.fixture(scope="module")
def released_checkpoint(released, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("released_train")
    checkpoint, log = train(GEMNET, released, run_dir, *ranks(2, 2))
    assert "fitted 17 GemNet-XL scale factors" in log
    return checkpoint


@pytest.fixture(scope="module")
def released_predictions(released, released_checkpoint, tmp_path_factory) -> dict:
    """``--mode predict`` at gp 2 given only the test split (the released S2EF val folder)."""
    run_dir = tmp_path_factory.mktemp("released_predict")
    return predict(GEMNET, released, released_checkpoint, run_dir, *ranks(2, 2), only_test=True)


def test_predict_reads_only_the_test_split(released_predictions):
    ids = released_predictions["ids"].tolist()
    assert len(ids) == len(set(ids)) == 6  # every val frame once, keyed "{sid}_{fid}"
    assert {i.split("_")[0] for i in ids} == {name.removeprefix("random") for name in VAL}
    forces = released_predictions["forces"]
    assert np.isfinite(forces).all() and forces.shape[1] == 3


def test_relaxations_read_only_the_relax_split(released, released_checkpoint, tmp_path):
    log = fairchem(
        "--mode",
        "run-relaxations",
        "--config-yml",
        "configs/is2rs/gemnet_xl_demo.yml",
        *ranks(2, 2),
        f"--dataset.relax.src={released / 'is2rs' / 'val'}",
        "--checkpoint",
        str(released_checkpoint),
        "--task.relaxation_steps=5",
        run_dir=tmp_path,
    )
    assert "positions_average_distance_within_threshold" in log  # IS2RS metrics
    assert "energy_within_threshold" in log  # IS2RE metrics of the relaxed energy
    [relaxed] = tmp_path.glob("results/*/relaxed_positions.npz")
    with np.load(relaxed) as result:
        assert sorted(result["ids"].tolist()) == sorted(n.removeprefix("random") for n in VAL)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_folder_stops_the_cli_before_any_rank(kind, released, tmp_path):
    ours_data = tmp_path / "ours"
    if kind == "mixed":
        from helpers.tiny_data import TINY_FRAMES

        from ocp_graphpar.tools.data import make_demo_dataset

        make_demo_dataset(
            ours_data, systems=2, max_steps=2, val_fraction=0.5, progress=False, counts=TINY_FRAMES
        )
    folder = bad_folder(kind, released, ours_data, tmp_path)
    started = time.monotonic()
    done = subprocess.run(
        [
            str(FAIRCHEM),
            "--mode",
            "train",
            "--config-yml",
            GEMNET,
            "--cpu",
            *ranks(2, 2),
            f"--dataset.train.src={folder}",
            f"--dataset.val.src={released / 's2ef' / 'val'}",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Running in local mode" not in done.stderr + done.stdout  # no rank was started
    assert "Traceback" not in done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("fairchem: error:")]
    assert "dataset.train.src: " in line and str(folder) in line
    for fragment in BAD[kind]:
        assert fragment in line
    assert time.monotonic() - started < 120


def test_checkpoint_relaxes_atoms_as_fairchem_ase_calculator(
    released_checkpoint, released_predictions
):
    """fairchem's ``OCPCalculator`` loads a GemNet-XL checkpoint, predicts what ``--mode
    predict`` predicted at gp 2 for the same structure, and drives an ASE relaxation."""
    from ase.optimize import LBFGS
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    # best_checkpoint.pt holds the EMA weights that --mode predict uses; the calculator loads
    # state_dict only, so checkpoint.pt would give it the raw, un-averaged weights
    best = released_checkpoint.with_name("best_checkpoint.pt")
    torch.set_default_dtype(torch.float32)  # the calculator builds its model in the default dtype
    atoms = oc20_atoms(VAL[0]).copy()  # frame 0: the "{sid}_0" prediction
    atoms.calc = OCPCalculator(checkpoint_path=str(best), cpu=True, seed=0)
    fixed = np.zeros(len(atoms), dtype=bool)
    fixed[atoms.constraints[0].get_indices()] = True
    row = released_predictions["ids"].tolist().index(f"{VAL[0].removeprefix('random')}_0")
    rows = np.split(released_predictions["forces"], released_predictions["chunk_idx"])[row]
    predicted = atoms.get_forces(apply_constraint=False)
    predicted = predicted[~fixed] if len(rows) == (~fixed).sum() else predicted
    np.testing.assert_allclose(predicted, rows, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(
        atoms.get_potential_energy(), released_predictions["energy"][row], rtol=1e-5, atol=1e-4
    )
    start = atoms.get_positions()
    optimizer = LBFGS(atoms, logfile=None)
    optimizer.run(fmax=1e-4, steps=5)
    assert optimizer.get_number_of_steps() == 5
    moved = np.abs(atoms.get_positions() - start).max(axis=1)
    assert moved[fixed].max() == 0 and moved[~fixed].max() > 0  # FixAtoms held by ASE
    assert np.isfinite(atoms.get_potential_energy())
