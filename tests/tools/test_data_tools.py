"""Tests of ``ocp_graphpar.tools.data``: from-traj on real OC20 data, the EMT demo, bad input.

The OC20 tests need ``../shared/data`` beside the repository and skip without it; the demo and
bad-input tests make their own data.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.data import convert as convert_module
from ocp_graphpar.tools.data import (
    derive_oc20_tags,
    make_demo_dataset,
    read_trajectories,
    s2ef_sample,
    split_systems,
    system_from_frames,
    systems_to_lmdbs,
    trajectories_to_lmdbs,
    write_lmdb,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OC20_MINI = SHARED_DATA / "oc20_mini"
needs_shared = pytest.mark.skipif(
    not OC20_MINI.is_dir(),
    reason=f"real OC20 trajectories not found at {OC20_MINI} (../shared beside the repository)",
)
# Small systems, used where every frame is compared or a quick real conversion is enough.
SUBSET = ("random1000100", "random1000120", "random1000156", "random1000187", "random1000163")
F32 = {"rtol": 1e-6, "atol": 1e-5}  # float32 storage of float64 inputs


def lmdb_samples(folder: Path) -> list:
    """Every sample of one LMDB folder, read by fairchem's own dataset class."""
    datasets = pytest.importorskip("fairchem.core.datasets")
    dataset = datasets.LmdbDataset({"src": str(folder)})
    return [dataset[i] for i in range(len(dataset))]


def oc20_files(names: tuple[str, ...] | None = None) -> list[Path]:
    files = sorted(OC20_MINI.glob("*.traj"))
    return [f for f in files if names is None or f.stem in names]


def partial_leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --------------------------------------------------------------------------- real OC20 data


@pytest.fixture(scope="module")
def oc20_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    if not OC20_MINI.is_dir():
        pytest.skip(f"real OC20 trajectories not found at {OC20_MINI}")
    out = tmp_path_factory.mktemp("oc20") / "dataset"
    summary = trajectories_to_lmdbs([OC20_MINI], out, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def oc20_samples(oc20_dataset: tuple[Path, object]) -> dict[str, list]:
    """Every sample of every split of the converted OC20 data, read once."""
    out, summary = oc20_dataset
    return {split: lmdb_samples(out / split) for split in summary.splits}


@needs_shared
def test_from_traj_writes_every_frame_with_metadata(
    oc20_dataset: tuple[Path, object], oc20_samples: dict[str, list]
) -> None:
    out, summary = oc20_dataset
    index = {
        line.split("\t")[0]: int(line.split("\t")[2])
        for line in (OC20_MINI / "index.tsv").read_text().splitlines()[1:]
    }
    manifest = json.loads((out / "dataset.json").read_text())
    seen = set()
    for split in ("s2ef/train", "s2ef/val"):
        samples = oc20_samples[split]
        natoms = np.load(out / split / "metadata.npz")["natoms"]
        assert natoms.dtype == np.int64
        assert natoms.tolist() == [int(s.natoms) for s in samples]
        assert [s.pos.shape[0] for s in samples] == natoms.tolist()
        assert manifest["splits"][split]["samples"] == len(samples)
        seen |= {(s.system, int(s.fid)) for s in samples}
    assert seen == {(name, fid) for name, frames in index.items() for fid in range(frames)}
    assert len(seen) == 4298


@needs_shared
def test_from_traj_round_trips_energy_forces_and_structure(oc20_samples: dict[str, list]) -> None:
    stored = {}
    for split in ("s2ef/train", "s2ef/val"):
        for sample in oc20_samples[split]:
            stored[(sample.system, int(sample.fid))] = sample
    for path in oc20_files(SUBSET):
        for fid, atoms in enumerate(ase.io.read(path, ":")):
            sample = stored[(path.stem, fid)]
            assert sample.pos.dtype == sample.forces.dtype == sample.cell.dtype
            assert str(sample.pos.dtype) == "torch.float32"
            assert sample.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
            assert sample.y == sample.energy
            # Raw DFT forces: fixed atoms keep theirs (get_forces() would zero them).
            np.testing.assert_allclose(
                sample.forces.numpy(), atoms.get_forces(apply_constraint=False), **F32
            )
            np.testing.assert_allclose(sample.pos.numpy(), atoms.positions, **F32)
            np.testing.assert_allclose(sample.cell.numpy()[0], atoms.cell.array, **F32)
            assert sample.atomic_numbers.tolist() == atoms.numbers.tolist()
            fixed = np.zeros(len(atoms))
            fixed[atoms.constraints[0].index] = 1.0
            assert sample.fixed.tolist() == fixed.tolist()
            assert sample.sid == int(path.stem.removeprefix("random"))


@needs_shared
def test_from_traj_splits_by_system(
    oc20_dataset: tuple[Path, object], oc20_samples: dict[str, list]
) -> None:
    _, summary = oc20_dataset
    train = {int(s.sid) for s in oc20_samples["s2ef/train"]}
    val = {int(s.sid) for s in oc20_samples["s2ef/val"]}
    assert not train & val
    assert len(train | val) == 24 and len(val) == 5  # round(24 * 0.2)
    assert {int(name.removeprefix("random")) for name in summary.val_systems} == val
    names = [p.stem for p in oc20_files()]
    assert split_systems(names, 0.2, 0) == split_systems(names[::-1], 0.2, 0)
    assert split_systems(names, 0.2, 0) != split_systems(names, 0.2, 1)


@needs_shared
def test_is2rs_holds_initial_and_relaxed_structure(
    oc20_dataset: tuple[Path, object], oc20_samples: dict[str, list]
) -> None:
    out, summary = oc20_dataset
    samples = oc20_samples["is2rs/val"]
    assert sorted(s.system for s in samples) == summary.val_systems
    natoms = np.load(out / "is2rs/val" / "metadata.npz")["natoms"]
    assert natoms.tolist() == [int(s.natoms) for s in samples]
    for sample in samples:
        frames = ase.io.read(OC20_MINI / f"{sample.system}.traj", ":")
        first, last = frames[0], frames[-1]
        np.testing.assert_allclose(sample.pos.numpy(), first.positions, **F32)
        np.testing.assert_allclose(sample.pos_relaxed.numpy(), last.positions, **F32)
        assert sample.y_relaxed == pytest.approx(last.get_potential_energy(), abs=1e-6)
        assert sample.energy_relaxed == sample.y_relaxed
        assert sample.y_init == sample.energy == pytest.approx(first.get_potential_energy())
        assert "fid" not in sample


@needs_shared
def test_derived_tags_mark_trailing_adsorbate_and_fixed_slab(
    oc20_samples: dict[str, list],
) -> None:
    for sample in oc20_samples["is2rs/val"] + oc20_samples["s2ef/train"][::50]:
        tags = sample.tags.numpy()
        numbers = sample.atomic_numbers.numpy().astype(int)
        fixed = sample.fixed.numpy().astype(bool)
        adsorbate = np.flatnonzero(tags == 2)
        assert adsorbate.size > 0
        assert adsorbate.tolist() == list(range(len(tags) - adsorbate.size, len(tags)))
        assert set(numbers[adsorbate].tolist()) <= {1, 6, 7, 8}
        assert (tags[fixed] == 0).all()
        assert (tags[~fixed & (tags != 2)] == 1).all()
        assert str(sample.tags.dtype) == "torch.int64"


def test_derive_oc20_tags_rules() -> None:
    #            Cu Cu Cu  O  C  O   (the last O is free, the O before it too)
    numbers = np.array([29, 29, 29, 8, 6, 8])
    fixed = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    assert derive_oc20_tags(numbers, fixed).tolist() == [0, 0, 1, 2, 2, 2]
    # A fixed C/H/N/O atom ends the adsorbate: it belongs to the (fixed) slab.
    fixed = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    assert derive_oc20_tags(numbers, fixed).tolist() == [0, 0, 1, 1, 0, 2]
    # No trailing H/C/N/O: no adsorbate.
    assert derive_oc20_tags(np.array([8, 29]), np.array([0, 0], bool)).tolist() == [1, 1]


@pytest.mark.skipif(not (SHARED_DATA / "atoms.json").is_file(), reason="no ../shared/data")
def test_tags_stored_in_the_file_are_kept() -> None:
    (system,) = read_trajectories([SHARED_DATA / "atoms.json"], progress=False)
    assert system.tags_from_file
    assert system.tags.tolist() == ase.io.read(SHARED_DATA / "atoms.json").get_tags().tolist()


@needs_shared
def test_linear_reference_is_fit_on_train_and_subtracted(tmp_path: Path) -> None:
    systems = read_trajectories(oc20_files(SUBSET), progress=False)
    out = tmp_path / "referenced"
    summary = systems_to_lmdbs(systems, out, linear_reference=True, progress=False)
    coefficients = {
        k: v
        for k, v in json.loads((out / "linear_reference.json").read_text())[
            "coefficients_eV"
        ].items()
    }
    by_z = np.load(out / "linear_reference.npz")["element_references"]
    assert by_z.shape == (119,)

    # Independent fit on the training systems only.
    train = [s for s in systems if s.name in summary.train_systems]
    rows = [np.bincount(s.numbers, minlength=119) for s in train for _ in range(s.n_frames)]
    energies = np.concatenate([s.energies for s in train])
    design = np.array(rows, dtype=float)
    present = np.flatnonzero(design.sum(axis=0))
    expected = np.zeros(119)
    expected[present] = np.linalg.lstsq(design[:, present], energies, rcond=None)[0]
    np.testing.assert_allclose(by_z, expected, rtol=1e-8, atol=1e-8)
    assert set(coefficients) == {Atoms(numbers=[z]).get_chemical_symbols()[0] for z in present}

    # Validation-only elements are not fitted, so their reference is 0.
    val_only = {int(z) for s in systems if s.name in summary.val_systems for z in s.numbers}
    val_only -= set(present.tolist())
    assert all(by_z[z] == 0.0 for z in val_only)

    raw = {s.name: s.energies for s in systems}
    for split in ("s2ef/train", "s2ef/val"):
        for sample in lmdb_samples(out / split):
            offset = by_z[sample.atomic_numbers.numpy().astype(int)].sum()
            assert sample.energy == pytest.approx(raw[sample.system][sample.fid] - offset, abs=1e-6)
    for sample in lmdb_samples(out / "is2rs/val"):
        offset = by_z[sample.atomic_numbers.numpy().astype(int)].sum()
        assert sample.y_relaxed == pytest.approx(raw[sample.system][-1] - offset, abs=1e-6)


# --------------------------------------------------------------------------- demo

DEMO_OPTIONS = {"systems": 3, "seed": 7, "max_steps": 8, "progress": False}


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("demo") / "dataset"
    return out, make_demo_dataset(out, **DEMO_OPTIONS)


def test_demo_is_deterministic_and_readable(
    demo_dataset: tuple[Path, object], tmp_path: Path
) -> None:
    first_dir, first = demo_dataset
    make_demo_dataset(tmp_path / "again", **DEMO_OPTIONS)
    assert set(first.splits) == {"s2ef/train", "s2ef/val", "is2rs/val"}
    for split in first.splits:
        a, b = lmdb_samples(first_dir / split), lmdb_samples(tmp_path / "again" / split)
        assert [s.energy for s in a] == [s.energy for s in b]
        assert len(a) == first.splits[split].samples > 0
        for sample in a:
            assert (sample.tags[sample.fixed.bool()] == 0).all()
            assert sample.tags[-1].item() == 2
    make_demo_dataset(tmp_path / "other", **{**DEMO_OPTIONS, "seed": 8})
    energies = [s.energy for s in lmdb_samples(tmp_path / "other" / "s2ef/train")]
    assert energies != [s.energy for s in lmdb_samples(first_dir / "s2ef/train")]


def test_demo_systems_mix_relaxation_and_non_equilibrium_frames():
    from ocp_graphpar.tools.data.demo import (
        FrameCounts,
        build_demo_atoms,
        demo_recipe,
        demo_system,
    )

    counts = FrameCounts(relaxation=6, md=5, rattled=3)
    system = demo_system(3, 0, counts=counts)
    assert system.n_frames == counts.relaxation + counts.md + counts.rattled
    np.testing.assert_allclose(system.positions[0], build_demo_atoms(demo_recipe(3, 0)).positions)
    free = ~system.fixed
    mean_force = np.abs(system.forces[:, free]).mean(axis=(1, 2))  # (frames,) eV/Å
    relaxed = np.linalg.norm(system.forces[-1, free], axis=1).max()
    assert relaxed <= 0.05  # the last frame is relaxed (fmax), what IS2RS reads
    non_equilibrium = mean_force[counts.relaxation - 1 : -1]
    assert non_equilibrium.size == counts.md + counts.rattled
    assert non_equilibrium.min() > 0.1 and non_equilibrium.mean() > 10 * mean_force[-1]
    # fixed atoms never move
    fixed = system.positions[:, system.fixed]
    assert np.abs(fixed - fixed[:1]).max() == 0


def test_demo_validation_systems_share_metals_and_adsorbates_with_training():
    from ocp_graphpar.tools.data.demo import demo_recipe, demo_split_seed

    seed = demo_split_seed(40, 0, 0.25)
    recipes = {r.name: r for r in (demo_recipe(0, i) for i in range(40))}
    train, val = split_systems(list(recipes), 0.25, seed)
    for kind in ("metal", "adsorbate"):
        seen = {getattr(recipes[name], kind) for name in train}
        assert {getattr(recipes[name], kind) for name in val} <= seen


def test_is2rs_lmdb_runs_through_fairchem_relaxation(demo_dataset: tuple[Path, object]) -> None:
    """fairchem's ml_relax and IS2RS/IS2RE evaluators accept the IS2RS LMDB as written.

    A stand-in trainer pulls every atom towards ``pos_relaxed`` with springs, so a correct
    relaxation ends at the stored relaxed structure with the stored relaxed energy.
    """
    pytest.importorskip("fairchem.core.common.relaxation.ml_relaxation")
    import torch
    from fairchem.core.common.relaxation.ml_relaxation import ml_relax
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.modules.evaluator import Evaluator

    class SpringTrainer:
        device = torch.device("cpu")

        def predict(self, batch, per_image=False, disable_tqdm=True):
            offset = batch.pos - batch.pos_relaxed
            energy = torch.zeros(len(batch)).index_add_(0, batch.batch, (offset**2).sum(1) / 2)
            return {"energy": energy + batch.energy_relaxed, "forces": -offset}

    out, _ = demo_dataset
    batch = data_list_collater(lmdb_samples(out / "is2rs/val"), otf_graph=True)
    relaxed = ml_relax(batch=batch, model=SpringTrainer(), steps=100, fmax=0.01, relax_opt={})
    free = relaxed.fixed == 0
    natoms_free = torch.stack([m.sum() for m in torch.split(free, relaxed.natoms.tolist())])
    common = {"cell": relaxed.cell, "pbc": torch.tensor([True] * 3), "natoms": natoms_free}
    prediction = {"positions": relaxed.pos[free], "energy": relaxed.energy, **common}
    target = {"positions": relaxed.pos_relaxed[free], "energy": relaxed.energy_relaxed, **common}
    is2rs = Evaluator(task="is2rs").eval(prediction, target, {})
    assert is2rs["positions_average_distance_within_threshold"]["metric"] == 1.0
    is2re = Evaluator(task="is2re").eval(prediction, target, {})
    assert is2re["energy_mae"]["metric"] < 1e-4


def test_metadata_satisfies_fairchems_balanced_sampler(demo_dataset: tuple[Path, object]) -> None:
    data_parallel = pytest.importorskip("fairchem.core.common.data_parallel")
    datasets = pytest.importorskip("fairchem.core.datasets")
    out, _ = demo_dataset
    dataset = datasets.LmdbDataset({"src": str(out / "s2ef/train")})
    sampler = data_parallel.BalancedBatchSampler(  # on_error="raise": metadata must be usable
        dataset, batch_size=4, num_replicas=2, rank=0, seed=0, on_error="raise"
    )
    indices = next(iter(sampler))
    assert sampler._get_natoms(indices).tolist() == [dataset[i].natoms for i in indices]


# --------------------------------------------------------------------------- bad input


def write_traj(path: Path, with_results: bool = True, frames: int = 2) -> Path:
    """A tiny two-atom 'relaxation' with (or without) energies and forces."""
    images = []
    for i in range(frames):
        atoms = Atoms("CuO", positions=[(0, 0, 0), (0, 0, 1.8 + 0.1 * i)], cell=[5, 5, 10])
        atoms.set_constraint(FixAtoms(indices=[0]))
        if with_results:
            atoms.calc = SinglePointCalculator(atoms, energy=-1.0 - i, forces=np.ones((2, 3)) * i)
        images.append(atoms)
    ase.io.write(path, images)
    return path


def missing_file(folder: Path) -> Path:
    return folder / "missing.traj"


def empty_file(folder: Path) -> Path:
    (folder / "empty.traj").write_bytes(b"")
    return folder / "empty.traj"


def file_without_results(folder: Path) -> Path:
    return write_traj(folder / "noresults.traj", with_results=False)


def corrupt_file(folder: Path) -> Path:
    (folder / "junk.traj").write_bytes(b"not a trajectory " * 8)
    return folder / "junk.traj"


def empty_folder(folder: Path) -> Path:
    return folder


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (missing_file, "does not exist"),
        (empty_file, "is empty"),
        (file_without_results, "no energy or forces"),
        (corrupt_file, "could not read"),
        (empty_folder, r"holds no \*\.traj files"),
    ],
    ids=["missing", "empty", "no-energies", "corrupt", "empty-folder"],
)
def test_bad_input_is_refused_with_a_clear_message(
    tmp_path: Path, make_input, message: str
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = make_input(inputs)
    with pytest.raises(UserFacingError, match=message):
        trajectories_to_lmdbs([source, write_traj(tmp_path / "ok.traj")], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert partial_leftovers(tmp_path / "out") == []


def test_bad_options_are_refused(tmp_path: Path) -> None:
    good = [write_traj(tmp_path / "a1.traj"), write_traj(tmp_path / "a2.traj")]
    with pytest.raises(UserFacingError, match="--val-fraction"):
        trajectories_to_lmdbs(good, tmp_path / "out", val_fraction=1.0)
    with pytest.raises(UserFacingError, match="cannot split 1 system"):
        trajectories_to_lmdbs(good[:1], tmp_path / "out")
    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.raises(UserFacingError, match="would both be system 'a1'"):
        trajectories_to_lmdbs([good[0], write_traj(sub / "a1.traj")], tmp_path / "out")
    with pytest.raises(UserFacingError, match="different atoms"):
        frames = [*ase.io.read(good[0], ":"), Atoms("Cu")]
        system_from_frames("mixed", frames)


def test_zero_val_fraction_writes_train_only(tmp_path: Path) -> None:
    summary = trajectories_to_lmdbs(
        [write_traj(tmp_path / "only.traj", frames=3)], tmp_path / "out", val_fraction=0.0
    )
    assert list(summary.splits) == ["s2ef/train"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dataset.json", "s2ef"]
    assert [s.fid for s in lmdb_samples(tmp_path / "out" / "s2ef/train")] == [0, 1, 2]


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path: Path) -> None:
    inputs = [write_traj(tmp_path / f"s{i}.traj", frames=i + 1) for i in range(3)]
    out = tmp_path / "out"
    trajectories_to_lmdbs(inputs, out, progress=False)
    with pytest.raises(UserFacingError, match="already exists.*--overwrite"):
        trajectories_to_lmdbs(inputs, out, progress=False)
    (out / "stale.txt").write_text("from the old dataset")
    summary = trajectories_to_lmdbs(inputs, out, seed=1, overwrite=True, progress=False)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "dataset.json").read_text())["options"]["seed"] == 1
    assert summary.splits["s2ef/train"].samples + summary.splits["s2ef/val"].samples == 6
    assert partial_leftovers(out) == []
    # A folder that is not ours is never replaced, even with --overwrite.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UserFacingError, match="not a dataset written by ocp-graphpar"):
        trajectories_to_lmdbs(inputs, foreign, overwrite=True)
    assert (foreign / "thesis.tex").exists()


def test_interrupted_run_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = [write_traj(tmp_path / f"s{i}.traj") for i in range(3)]
    real_write = convert_module.write_lmdb
    calls = []

    def write_then_crash(folder, samples, **kwargs):
        calls.append(folder)
        if len(calls) == 2:  # the first LMDB is complete, the second dies half-way
            next(iter(samples))
            raise KeyboardInterrupt
        return real_write(folder, samples, **kwargs)

    monkeypatch.setattr(convert_module, "write_lmdb", write_then_crash)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        trajectories_to_lmdbs(inputs, out, progress=False)
    assert not out.exists()
    assert partial_leftovers(out) == []

    # With --overwrite the previous dataset survives an interrupted replacement untouched.
    monkeypatch.setattr(convert_module, "write_lmdb", real_write)
    trajectories_to_lmdbs(inputs, out, progress=False)
    before = (out / "dataset.json").read_text()
    calls.clear()
    monkeypatch.setattr(convert_module, "write_lmdb", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        trajectories_to_lmdbs(inputs, out, seed=5, overwrite=True, progress=False)
    assert (out / "dataset.json").read_text() == before
    assert partial_leftovers(out) == []


# --------------------------------------------------------------------------- CLI


def test_cli_returns_0_on_success_and_2_on_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ocp_graphpar.cli import main

    inputs = [str(write_traj(tmp_path / f"s{i}.traj")) for i in range(2)]
    out = tmp_path / "out"
    assert main(["data", "from-traj", *inputs, "--out", str(out)]) == 0
    assert "s2ef/train" in capsys.readouterr().out
    assert (out / "s2ef" / "train" / "data.lmdb").is_file()
    assert main(["data", "from-traj", *inputs, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(["data", "from-traj", str(tmp_path / "nope.traj"), "--out", str(tmp_path / "x")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    demo = ["data", "demo", "--out", str(tmp_path / "demo"), "--systems", "2", "--max-steps", "3"]
    assert main(demo) == 0
    one_system = ["data", "demo", "--out", str(tmp_path / "demo1"), "--systems", "1"]
    assert main(one_system) == 2
    assert "--systems must be at least 2" in capsys.readouterr().err


@needs_shared
def test_cli_on_real_trajectories(tmp_path: Path) -> None:
    from ocp_graphpar.cli import main

    files = [str(p) for p in oc20_files(SUBSET[:3])]
    out = tmp_path / "oc20"
    assert main(["data", "from-traj", *files, "--out", str(out), "--linear-reference"]) == 0
    assert (out / "linear_reference.json").is_file()
    assert len(lmdb_samples(out / "is2rs/val")) == 1


def test_lmdb_map_grows_past_its_initial_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocp_graphpar.tools.data import lmdb_writer

    monkeypatch.setattr(lmdb_writer, "_INITIAL_MAP_SIZE", 32 << 10)  # far below the data size
    (system,) = read_trajectories([write_traj(tmp_path / "big.traj", frames=300)], progress=False)
    samples = (s2ef_sample(system, f, sid=1) for f in range(system.n_frames))
    natoms = write_lmdb(tmp_path / "lmdb", samples, total=system.n_frames, progress=False)
    assert natoms.tolist() == [2] * 300
    read_back = lmdb_samples(tmp_path / "lmdb")
    assert [s.energy for s in read_back] == pytest.approx(system.energies.tolist())
