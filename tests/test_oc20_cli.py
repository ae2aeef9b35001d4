"""OC20's released layout through the unmodified ``fairchem`` CLI at gp 2: train, predict with
only a test split, relax with only a relax split; bad folders stop before any rank starts; the
checkpoint as fairchem's ASE calculator."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
from oc20 import oc20_atoms, require_oc20_mini
from released_layout import write_released_dataset
from test_fairchem_cli import FAIRCHEM, REPO, fairchem, ranks, train
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


def test_predict_reads_only_the_test_split(released, released_checkpoint, tmp_path):
    fairchem(
        "--mode", "predict", "--config-yml", GEMNET, *ranks(2, 2),
        f"--dataset.test.src={released / 's2ef' / 'val'}", "--checkpoint", str(released_checkpoint),
        run_dir=tmp_path,
    )  # fmt: skip
    [predictions] = tmp_path.glob("results/*/*_predictions.npz")
    with np.load(predictions) as result:
        ids = result["ids"].tolist()
        assert len(ids) == len(set(ids)) == 6  # every val frame once, keyed "{sid}_{fid}"
        assert {i.split("_")[0] for i in ids} == {name.removeprefix("random") for name in VAL}
        assert np.isfinite(result["forces"]).all() and result["forces"].shape[1] == 3


def test_relaxations_read_only_the_relax_split(released, released_checkpoint, tmp_path):
    log = fairchem(
        "--mode", "run-relaxations", "--config-yml", "configs/is2rs/gemnet_xl_demo.yml",
        *ranks(2, 2), f"--dataset.relax.src={released / 'is2rs' / 'val'}",
        "--checkpoint", str(released_checkpoint), "--task.relaxation_steps=5", run_dir=tmp_path,
    )  # fmt: skip
    assert "positions_average_distance_within_threshold" in log  # IS2RS metrics
    assert "energy_within_threshold" in log  # IS2RE metrics of the relaxed energy
    [relaxed] = tmp_path.glob("results/*/relaxed_positions.npz")
    with np.load(relaxed) as result:
        assert sorted(result["ids"].tolist()) == sorted(n.removeprefix("random") for n in VAL)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_folder_stops_the_cli_before_any_rank(kind, released, tmp_path):
    ours_data = tmp_path / "ours"
    if kind == "mixed":
        from ocp_graphpar.tools.data import make_demo_dataset

        make_demo_dataset(ours_data, systems=2, max_steps=2, val_fraction=0.5, progress=False)
    folder = bad_folder(kind, released, ours_data, tmp_path)
    started = time.monotonic()
    done = subprocess.run(
        [str(FAIRCHEM), "--mode", "train", "--config-yml", GEMNET, "--cpu", *ranks(2, 2),
         f"--dataset.train.src={folder}", f"--dataset.val.src={released / 's2ef' / 'val'}",
         "--run-dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Running in local mode" not in done.stderr + done.stdout  # no rank was started
    assert "Traceback" not in done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("fairchem: error:")]
    assert "dataset.train.src: " in line and str(folder) in line
    for fragment in BAD[kind]:
        assert fragment in line
    assert time.monotonic() - started < 120


def test_checkpoint_relaxes_atoms_as_fairchem_ase_calculator(released_checkpoint):
    from ase.optimize import LBFGS
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    atoms = oc20_atoms(VAL[0]).copy()
    atoms.calc = OCPCalculator(checkpoint_path=str(released_checkpoint), cpu=True, seed=0)
    start = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert np.isfinite(start) and forces.shape == (len(atoms), 3)
    free = ~np.isin(np.arange(len(atoms)), atoms.constraints[0].get_indices())
    assert np.abs(forces[~free]).max() == 0  # FixAtoms applied by ASE
    positions = atoms.get_positions()
    LBFGS(atoms, logfile=None).run(fmax=0.01, steps=5)
    assert np.abs(atoms.get_positions()[free] - positions[free]).max() > 0
    assert atoms.get_potential_energy() < start
