"""OC20's released LMDB layout and ours, read by one dataset format; bad folders refused by name.

The released layout is written from ``../shared/data/oc20_mini`` as the OCP scripts did
(``released_layout``); these tests skip without that folder.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from helpers.oc20 import require_oc20_mini
from helpers.released_layout import pyg1_pickle, write_lmdb_file, write_released_dataset

from ocp_graphpar.datasets import OC20_RELEASED, OCP_GRAPHPAR, OC20LmdbDataset, survey_folder
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.launch.datasets import prepare_datasets

TRAIN = ("random1000100", "random1000187")
VAL = ("random1000120", "random1000156")


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    require_oc20_mini()
    return write_released_dataset(
        tmp_path_factory.mktemp("released") / "oc20", train=TRAIN, val=VAL
    )


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Path:
    from ocp_graphpar.tools.data import trajectories_to_lmdbs

    root = require_oc20_mini()
    out = tmp_path_factory.mktemp("ours") / "data"
    trajectories_to_lmdbs(
        [root / f"{name}.traj" for name in TRAIN + VAL],
        out,
        val_fraction=0.5,
        progress=False,
    )
    return out


def first_raw(path: Path) -> object:
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        raw = txn.get(b"0")
    env.close()
    return pickle.loads(raw)


def test_fixture_is_the_released_layout(released):
    train = released / "s2ef" / "train"
    assert sorted(p.name for p in train.iterdir() if not p.name.endswith("-lock")) == [
        "data.0000.lmdb",
        "data.0001.lmdb",
        "data_log.0000.txt",
        "data_log.0001.txt",
    ]
    raw = first_raw(train / "data.0000.lmdb")
    assert "_store" not in raw.__dict__  # pickled as PyG 1.x did
    assert {"y", "force", "edge_index", "cell_offsets", "neighbors", "tags", "sid", "fid"} <= set(
        raw.__dict__
    )
    assert "energy" not in raw.__dict__ and "forces" not in raw.__dict__


def test_released_s2ef_samples_read_under_fairchem_names(released):
    folder = released / "s2ef" / "train"
    survey = survey_folder(folder, where="test", needs=("energy", "forces"))
    assert survey.layout is OC20_RELEASED and len(survey.files) == 2
    dataset = OC20LmdbDataset({"src": str(folder)})
    assert len(dataset) == survey.num_samples == 11
    raws = [first_raw(f) for f in survey.files]
    for index, raw in zip((0, survey.counts[0]), raws):
        sample = dataset[index]
        assert "y" not in sample and "force" not in sample
        assert sample.energy == raw.__dict__["y"]
        torch.testing.assert_close(sample.forces, raw.__dict__["force"], rtol=0, atol=0)
        torch.testing.assert_close(sample.edge_index, raw.__dict__["edge_index"], rtol=0, atol=0)
        assert (sample.sid, sample.fid) == (raw.__dict__["sid"], raw.__dict__["fid"])


def test_released_is2re_samples_and_the_relaxed_energy_target(released):
    folder = released / "is2rs" / "val"
    frame = OC20LmdbDataset({"src": str(folder)})[0]
    relaxed = OC20LmdbDataset({"src": str(folder), "energy_target": "relaxed"})[0]
    raw = first_raw(folder / "data.lmdb").__dict__
    assert frame.energy == raw["y_init"] and frame.energy_relaxed == raw["y_relaxed"]
    assert relaxed.energy == raw["y_relaxed"]
    torch.testing.assert_close(frame.pos_relaxed, raw["pos_relaxed"], rtol=0, atol=0)


def test_our_layout_reads_unchanged(ours):
    folder = ours / "s2ef" / "train"
    assert survey_folder(folder, where="test", needs=("energy", "forces")).layout is OCP_GRAPHPAR
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    mine, upstream = OC20LmdbDataset({"src": str(folder)})[3], LmdbDataset({"src": str(folder)})[3]
    assert set(mine.keys()) == set(upstream.keys())
    for key in ("energy", "forces", "pos"):
        torch.testing.assert_close(torch.as_tensor(mine[key]), torch.as_tensor(upstream[key]))


def test_stored_edges_give_the_on_the_fly_model(released):
    """The released layout's stored 6 A / 50-neighbour graph and fairchem's on-the-fly graph
    give GemNet-XL the same energies and forces (float64, one process); with ``otf_graph:
    False`` a batch without stored edges (our layout) falls back to the on-the-fly graph."""
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from helpers.ocp_trainer import load_repo_config
    from helpers.recipe_cases import SMALL_WIDTHS

    from ocp_graphpar.models import GemNetXL

    dataset = OC20LmdbDataset({"src": str(released / "s2ef" / "val")})
    config = load_repo_config("s2ef/gemnet_xl")["model"]
    config = {k: v for k, v in config.items() if k != "name"} | SMALL_WIDTHS["GemNetXL"]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    try:
        model = GemNetXL(**(config | {"auto_fit_scale_factors": False}))
        batch = data_list_collater([dataset[0], dataset[4]], otf_graph=False)
        assert batch.edge_index.shape[1] > 0
        batch.pos = batch.pos.double()
        outputs = {}
        for otf in (False, True):
            model.otf_graph = otf
            outputs[otf] = model(batch.clone())
        edgeless = batch.clone()
        for key in ("edge_index", "cell_offsets", "neighbors"):
            del edgeless[key]
        model.otf_graph = False
        outputs["no stored edges"] = model(edgeless)
    finally:
        torch.set_default_dtype(torch.float32)
    for case in (False, "no stored edges"):
        for key in ("energy", "forces"):
            torch.testing.assert_close(
                outputs[case][key], outputs[True][key], rtol=1e-12, atol=1e-12
            )


# ----------------------------------------------------------------------------- bad folders


def bad_folder(kind: str, released: Path, ours: Path, root: Path) -> Path:
    """A dataset folder a run cannot use, of the given kind."""
    folder = root / kind
    if kind == "empty":
        folder.mkdir()
        write_lmdb_file(folder / "data.0000.lmdb", [])
    elif kind == "no_lmdb":
        folder.mkdir()
        (folder / "README.txt").write_text("not data\n")
    elif kind == "unknown_keys":
        folder.mkdir()
        fields = {
            "atomic_numbers": torch.ones(2),
            "pos": torch.zeros(2, 3),
            "cell": torch.eye(3)[None],
            "natoms": 2,
            "total_energy": -1.0,
            "gradient": torch.zeros(2, 3),
        }
        write_lmdb_file(folder / "data.lmdb", [pyg1_pickle(fields)])
    elif kind == "mixed":
        folder.mkdir()
        shutil.copy(released / "s2ef" / "train" / "data.0000.lmdb", folder / "data.0000.lmdb")
        shutil.copy(ours / "s2ef" / "train" / "data.lmdb", folder / "data.0001.lmdb")
    elif kind == "nan_energy":
        folder.mkdir()
        raw = first_raw(released / "s2ef" / "train" / "data.0001.lmdb").__dict__
        good = pyg1_pickle({k: v for k, v in raw.items() if v is not None})
        nan = pyg1_pickle({k: v for k, v in raw.items() if v is not None} | {"y": float("nan")})
        write_lmdb_file(folder / "data.0000.lmdb", [good, good, nan])
    return folder


BAD = {
    "empty": ["hold no samples", "data.0000.lmdb"],
    "no_lmdb": ["holds no .lmdb files", "README.txt"],
    "unknown_keys": [
        "Keys found: atomic_numbers, cell, gradient, natoms, pos, total_energy",
        "Keys expected: ocp-graphpar: energy, forces",
        "OC20 released: y, force",
    ],
    "mixed": [
        "mixes sample layouts",
        "OC20 released: data.0000.lmdb",
        "ocp-graphpar: data.0001.lmdb",
    ],
    "nan_energy": ["sample 2 of", "non-finite values in y"],
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_folders_are_refused_by_name(kind, released, ours, tmp_path):
    folder = bad_folder(kind, released, ours, tmp_path)
    config = {
        "mode": "train",
        "outputs": {"energy": {}, "forces": {}},
        "dataset": {
            "train": {"format": "ocp_graphpar.datasets.OC20LmdbDataset", "src": str(folder)},
            "val": {"src": str(released / "s2ef" / "val")},
        },
    }
    with pytest.raises(UserFacingError) as error:
        prepare_datasets(config)
    message = str(error.value)
    assert message.startswith("dataset.train.src: ") and str(folder) in message
    for fragment in BAD[kind]:
        assert fragment in message, message


def test_a_test_split_needs_no_targets_but_a_training_split_does(released, tmp_path):
    folder = tmp_path / "test_split"
    folder.mkdir()
    raw = first_raw(released / "s2ef" / "val" / "data.0000.lmdb").__dict__
    unlabelled = {k: v for k, v in raw.items() if v is not None and k not in ("y", "force")}
    write_lmdb_file(folder / "data.0000.lmdb", [pyg1_pickle(unlabelled)])
    predict = {
        "mode": "predict",
        "outputs": {"energy": {}, "forces": {}},
        "dataset": {
            "train": {"format": "ocp_graphpar.datasets.OC20LmdbDataset", "src": "data/nowhere"},
            "val": {"src": "data/nowhere"},
            "test": {"src": str(folder)},
        },
    }
    prepared = prepare_datasets(predict)["dataset"]
    assert "src" not in prepared["train"] and "val" not in prepared
    assert prepared["train"]["format"].endswith("OC20LmdbDataset")
    train = {**predict, "mode": "train"}
    train["dataset"] = {
        "train": {"format": predict["dataset"]["train"]["format"], "src": str(folder)}
    }
    with pytest.raises(UserFacingError, match="carry no targets in either layout"):
        prepare_datasets(train)


def test_each_mode_needs_its_own_split():
    config = {
        "mode": "run-relaxations",
        "outputs": {},
        "dataset": {"train": {"format": "ocp_graphpar.datasets.OC20LmdbDataset", "src": "x"}},
    }
    with pytest.raises(UserFacingError, match=r"--dataset\.relax\.src=FOLDER"):
        prepare_datasets(config)


def test_other_formats_pass_through_untouched():
    config = {"mode": "predict", "dataset": {"train": {"format": "lmdb", "src": "x"}}}
    assert prepare_datasets(config) == {
        "mode": "predict",
        "dataset": {"train": {"format": "lmdb", "src": "x"}},
    }


def test_released_energies_are_referenced_like_adsorption_energies(released):
    """The fixture subtracts per-element references, so energies are O(eV), as OC20's are."""
    energies = np.array(
        [s.energy for s in OC20LmdbDataset({"src": str(released / "s2ef" / "train")})]
    )
    assert np.abs(energies).max() < 20


def test_a_mode_without_training_data_takes_fitted_normalizers_from_the_checkpoint(released):
    fitted = {"fit": {"targets": {"energy": {}, "forces": {"mean": 0.0}}, "batch_size": 32}}
    config = {
        "mode": "predict",
        "outputs": {},
        "dataset": {
            "train": {
                "format": "ocp_graphpar.datasets.OC20LmdbDataset",
                "src": "x",
                "transforms": {
                    "normalizer": fitted,
                    "element_references": {**fitted, "file": "refs.npz"},
                },
            },
            "test": {"src": str(released / "s2ef" / "val")},
        },
    }
    transforms = prepare_datasets(config)["dataset"]["train"]["transforms"]
    assert transforms == {"element_references": {"file": "refs.npz"}}
