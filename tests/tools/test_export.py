"""Tests of ``ocp_graphpar.tools.export``: OC20 leaderboard submissions from fairchem predictions.

The prediction files are built here in the layouts fairchem-core 1.10 writes (``save_results``
of ``--mode predict``; ``relaxed_positions.npz`` of ``--mode run-relaxations``): rows sorted by
``np.unique(ids)``, S2EF forces of free atoms only, ``chunk_idx = np.cumsum(counts)[:-1]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ocp_graphpar.cli import main
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.export import (
    SPLITS,
    TASK_KEYS,
    collect_predictions,
    export_submission,
    resolve_prediction_file,
    validate_submission,
)

SID_BASE = {"id": 1000, "ood_ads": 2000, "ood_cat": 3000, "ood_both": 4000}
TASKS = ("s2ef", "is2rs", "is2re")


def _sorted_like_fairchem(ids: list[str], *per_system: list) -> tuple:
    """Order of fairchem's ``save_results``: ``np.unique(ids, return_index=True)``."""
    unique, order = np.unique(ids, return_index=True)
    return (unique, *([values[i] for i in order] for values in per_system))


def write_s2ef(path: Path, split: str, seed: int = 0) -> Path:
    """An ``ocp_predictions.npz`` of ``--mode predict``: float16, energy (n, 1) as 1.10 writes."""
    rng = np.random.default_rng(seed + SID_BASE[split])
    ids, energies, forces = [], [], []
    for sid in range(SID_BASE[split], SID_BASE[split] + 4):
        for fid in range(int(rng.integers(2, 13))):  # fids 0..11: "10" sorts before "2"
            natoms, free = int(rng.integers(8, 20)), int(rng.integers(2, 7))
            fixed = np.r_[np.ones(natoms - free), np.zeros(free)]
            all_forces = rng.normal(size=(natoms, 3)).astype(np.float16)
            ids.append(f"{sid}_{fid}")
            energies.append(rng.normal(size=1).astype(np.float16))
            forces.append(all_forces[fixed == 0])  # fairchem 1.x keeps free atoms only
    ids, energies, forces = _sorted_like_fairchem(ids, energies, forces)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        ids=ids,
        energy=np.array(energies),
        forces=np.concatenate(forces),
        chunk_idx=np.cumsum([len(f) for f in forces])[:-1],
    )
    return path


def write_is2rs(path: Path, split: str, seed: int = 0) -> Path:
    """A ``relaxed_positions.npz``: float64 positions of all atoms, ids ``"{sid}"``."""
    rng = np.random.default_rng(seed + SID_BASE[split])
    ids = [str(sid) for sid in range(SID_BASE[split], SID_BASE[split] + 5)]
    positions = [rng.uniform(0, 10, size=(int(rng.integers(8, 20)), 3)) for _ in ids]
    ids, positions = _sorted_like_fairchem(ids, positions)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        ids=ids,
        pos=np.concatenate(positions),
        chunk_idx=np.cumsum([len(p) for p in positions])[:-1],
    )
    return path


def write_is2re(path: Path, split: str, seed: int = 0, frame_ids: bool = False) -> Path:
    """IS2RE predictions (ids + energy, float32 here); ``frame_ids``: ids ``"{sid}_{fid}"``."""
    rng = np.random.default_rng(seed + SID_BASE[split])
    sids = range(SID_BASE[split], SID_BASE[split] + 6)
    ids = [f"{sid}_{sid % 7}" if frame_ids else str(sid) for sid in sids]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, ids=np.array(ids), energy=rng.normal(size=len(ids)).astype("f4"))
    return path


WRITERS = {"s2ef": write_s2ef, "is2rs": write_is2rs, "is2re": write_is2re}
INPUT_NAME = {"s2ef": "ocp_predictions.npz", "is2rs": "relaxed_positions.npz"}
INPUT_NAME["is2re"] = "is2re_predictions.npz"


def split_files(root: Path, task: str) -> dict[str, Path]:
    return {s: WRITERS[task](root / "in" / s / INPUT_NAME[task], s) for s in SPLITS}


def split_options(files: dict[str, Path]) -> list[str]:
    return [arg for s in SPLITS for arg in ("--" + s.replace("_", "-"), str(files[s]))]


@pytest.fixture
def s2ef_arrays(tmp_path) -> dict[str, np.ndarray]:
    """A valid S2EF submission's arrays."""
    arrays, _ = collect_predictions("s2ef", split_files(tmp_path, "s2ef"))
    assert validate_submission(arrays, "s2ef") == []
    return arrays


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("task", TASKS)
def test_export_round_trip_keeps_every_prediction(tmp_path, task):
    files = split_files(tmp_path, task)
    out = export_submission(task, files, tmp_path / "submission")
    assert out == tmp_path / "submission.npz" and leftovers(tmp_path) == []
    assert validate_submission(out, task) == []
    with np.load(out) as written:
        assert sorted(written.files) == sorted(f"{s}_{k}" for s in SPLITS for k in TASK_KEYS[task])
        for split, path in files.items():
            with np.load(path) as source:
                np.testing.assert_array_equal(written[f"{split}_ids"], source["ids"])
                assert written[f"{split}_ids"].dtype.kind == "U"
                for key in set(source.files) - {"ids"}:
                    got, expected = written[f"{split}_{key}"], source[key]
                    assert got.dtype == expected.dtype  # float16 stays float16, f8 stays f8
                    np.testing.assert_array_equal(got, expected.reshape(got.shape))
                if task == "s2ef":
                    assert written[f"{split}_energy"].shape == (len(source["ids"]),)
                    per_system = np.split(written[f"{split}_forces"], source["chunk_idx"])
                    assert len(per_system) == len(source["ids"])


@pytest.mark.parametrize("task", TASKS)
def test_cli_export_then_validate(tmp_path, task, capsys):
    files = split_files(tmp_path, task)
    out = tmp_path / "sub.npz"
    assert main(["export", task, *split_options(files), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {task} submission {out}" in printed
    assert all(f"  {s} " in printed for s in SPLITS)
    assert main(["validate", str(out), "--task", task]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1].startswith(f"OK: {out} is a valid {task} submission (4 splits")
    assert ("free atoms only (fixed == 0)" in printed) == (task == "s2ef")


def test_s2ef_export_summary_and_free_atom_note(tmp_path, capsys):
    files = split_files(tmp_path, "s2ef")
    out = tmp_path / "sub.npz"
    assert main(["export", "s2ef", *split_options(files), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with np.load(files["ood_cat"]) as source:
        systems, rows = len(source["ids"]), len(source["forces"])
    assert f"  {'ood_cat':<9} {systems:>9} {rows:>11}  energy float16, forces float16" in printed
    assert "flattened energy (n, 1) -> (n,)" in printed
    assert main(["validate", str(out), "--task", "s2ef"]) == 0
    total = 0
    for path in files.values():
        with np.load(path) as source:
            total += len(source["forces"])
    assert f"this file has {total} force rows" in capsys.readouterr().out


def test_dtype_option_casts_values_only(tmp_path):
    files = split_files(tmp_path, "s2ef")
    out = export_submission("s2ef", files, tmp_path / "sub.npz", dtype="float32")
    with np.load(out) as written:
        assert written["id_energy"].dtype == written["id_forces"].dtype == np.float32
        assert written["id_chunk_idx"].dtype.kind == "i" and written["id_ids"].dtype.kind == "U"


def test_is2re_from_frame_ids_one_per_system(tmp_path):
    files = {s: write_is2re(tmp_path / f"{s}.npz", s, frame_ids=True) for s in SPLITS}
    out = export_submission("is2re", files, tmp_path / "sub.npz")
    with np.load(out) as written:
        assert written["id_ids"].tolist() == [str(sid) for sid in range(1000, 1006)]


def test_is2re_refuses_several_frames_per_system(tmp_path):
    files = {s: write_is2re(tmp_path / f"{s}.npz", s) for s in SPLITS}
    files["ood_cat"] = write_s2ef(tmp_path / "s2ef.npz", "ood_cat")  # many frames per sid
    with pytest.raises(UserFacingError, match="one energy per system"):
        export_submission("is2re", files, tmp_path / "sub.npz")
    assert not (tmp_path / "sub.npz").exists()


def test_folder_inputs_resolved(tmp_path):
    files = {}
    for split in SPLITS:
        run = tmp_path / f"run_{split}"
        write_s2ef(run / "results" / "2024-05-01-10-00-00" / "ocp_predictions.npz", split)
        write_s2ef(run / "results" / ".partial" / "ocp_predictions.npz", split, seed=1)
        files[split] = run
    assert resolve_prediction_file("s2ef", files["id"]) == (
        tmp_path / "run_id" / "results" / "2024-05-01-10-00-00" / "ocp_predictions.npz"
    )
    files["ood_ads"] = files["ood_ads"] / "results"  # results/ itself: one level of timestamps
    out = export_submission("s2ef", files, tmp_path / "sub.npz")
    assert validate_submission(out, "s2ef") == []
    write_is2rs(tmp_path / "relax" / "relaxed_positions.npz", "id")
    assert resolve_prediction_file("is2rs", tmp_path / "relax").name == "relaxed_positions.npz"


def test_folder_inputs_none_or_several(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserFacingError, match=r"no \*_predictions.npz in .*empty"):
        resolve_prediction_file("s2ef", tmp_path / "empty")
    write_s2ef(tmp_path / "two" / "results" / "a" / "ocp_predictions.npz", "id")
    write_s2ef(tmp_path / "two" / "results" / "b" / "s2ef_predictions.npz", "id")
    with pytest.raises(UserFacingError, match="several .* pass one file"):
        resolve_prediction_file("s2ef", tmp_path / "two")
    with pytest.raises(UserFacingError, match="not found"):
        resolve_prediction_file("s2ef", tmp_path / "missing")


def test_output_never_overwritten_without_flag(tmp_path, capsys):
    files = split_files(tmp_path, "is2re")
    out = tmp_path / "sub.npz"
    out.write_bytes(b"precious")
    with pytest.raises(UserFacingError, match="already exists; pass --overwrite"):
        export_submission("is2re", files, out)
    argv = ["export", "is2re", *split_options(files), "--out", str(tmp_path / "sub")]
    assert main(argv) == 2  # ".npz" appended, so this names the same file
    assert "ocp-graphpar: error:" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main([*argv, "--overwrite"]) == 0
    assert validate_submission(out, "is2re") == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_export_leaves_no_output(tmp_path, monkeypatch, existing):
    files = split_files(tmp_path, "s2ef")
    out = tmp_path / "sub.npz"
    if existing:
        out.write_bytes(b"old submission")

    def interrupted(file, *args, **kwds):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_submission("s2ef", files, out, overwrite=True)
    assert leftovers(tmp_path) == []
    assert (out.read_bytes() == b"old submission") if existing else not out.exists()


def test_output_created_during_export_is_kept(tmp_path, monkeypatch):
    files = split_files(tmp_path, "is2re")
    out = tmp_path / "sub.npz"
    savez_compressed = np.savez_compressed

    def racing(file, **arrays):
        savez_compressed(file, **arrays)
        out.write_bytes(b"written by someone else meanwhile")

    monkeypatch.setattr(np, "savez_compressed", racing)
    with pytest.raises(UserFacingError, match="already exists"):
        export_submission("is2re", files, out)
    assert out.read_bytes() == b"written by someone else meanwhile" and leftovers(tmp_path) == []


def test_export_refuses_invalid_predictions(tmp_path):
    files = split_files(tmp_path, "s2ef")
    with np.load(files["ood_both"]) as source:
        arrays = dict(source)
    arrays["forces"][3, 1] = np.nan
    np.savez_compressed(files["ood_both"], **arrays)
    with pytest.raises(UserFacingError, match=r"\[ood_both\] ood_both_forces: 1 non-finite"):
        export_submission("s2ef", files, tmp_path / "sub.npz")
    assert not (tmp_path / "sub.npz").exists() and leftovers(tmp_path) == []


def test_export_input_errors(tmp_path):
    files = split_files(tmp_path, "is2re")
    with pytest.raises(UserFacingError, match="has no pos, chunk_idx .*task.write_pos: True"):
        export_submission("is2rs", files, tmp_path / "sub.npz")
    with pytest.raises(UserFacingError, match="--id and --ood-cat are the same file"):
        export_submission("is2re", {**files, "ood_cat": files["id"]}, tmp_path / "sub.npz")
    with pytest.raises(UserFacingError, match="missing --ood-both"):
        export_submission("is2re", {**files, "ood_both": None}, tmp_path / "sub.npz")
    assert not (tmp_path / "sub.npz").exists()


# --------------------------------------------------------------------------- validate


def _drop(arrays, *keys):
    for key in keys:
        del arrays[key]


def _set(key, index, value):
    def corrupt(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value

    return corrupt


def _swap_chunks(arrays):
    order = np.arange(len(arrays["ood_cat_chunk_idx"]))
    order[[3, 4]] = order[[4, 3]]
    arrays["ood_cat_chunk_idx"] = arrays["ood_cat_chunk_idx"][order]


def _empty_split(arrays):
    arrays.update(
        ood_both_ids=np.array([], dtype="<U6"),
        ood_both_energy=np.array([], dtype=np.float16),
        ood_both_forces=np.zeros((0, 3), dtype=np.float16),
        ood_both_chunk_idx=np.array([], dtype=np.int64),
    )


def _rename_split(arrays):
    for key in [k for k in arrays if k.startswith("ood_cat_")]:
        arrays[key.replace("ood_cat_", "ood_cats_")] = arrays.pop(key)


CORRUPTIONS = {
    # name: (corrupt(arrays), split, key, words of the message)
    "missing split": (
        lambda a: _drop(a, *[k for k in list(a) if k.startswith("ood_cat_")]),
        "ood_cat",
        "ood_cat_{ids,energy,forces,chunk_idx}",
        "split is missing",
    ),
    "missing key": (lambda a: _drop(a, "id_forces"), "id", "id_forces", "missing key"),
    "extra key": (
        lambda a: a.update(id_pos=a["id_forces"]),
        "id",
        "id_pos",
        "belongs to is2rs",
    ),
    "misnamed split": (_rename_split, None, "ood_cats_ids", "rename it to ood_cat_ids"),
    "duplicate id": (
        lambda a: _set("ood_ads_ids", 1, a["ood_ads_ids"][0])(a),
        "ood_ads",
        "ood_ads_ids",
        "more than once",
    ),
    "id in two splits": (
        lambda a: _set("ood_both_ids", 0, a["id_ids"][0])(a),
        "ood_both",
        "ood_both_ids",
        "also in the id split",
    ),
    "chunk_idx too short": (
        lambda a: a.update(id_chunk_idx=a["id_chunk_idx"][:-1]),
        "id",
        "id_chunk_idx",
        "needs len(ids) - 1",
    ),
    "chunk_idx decreasing": (
        _swap_chunks,
        "ood_cat",
        "ood_cat_chunk_idx",
        "decreases at 1 place (first after index 3)",
    ),
    "chunk_idx 2-D": (
        lambda a: a.update(id_chunk_idx=a["id_chunk_idx"][:, None]),
        "id",
        "id_chunk_idx",
        "not (n - 1,)",
    ),
    "chunk_idx out of range": (
        lambda a: _set("ood_ads_chunk_idx", -1, len(a["ood_ads_forces"]) + 5)(a),
        "ood_ads",
        "ood_ads_chunk_idx",
        "outside [0,",
    ),
    "system without rows": (
        lambda a: _set("id_chunk_idx", -1, len(a["id_forces"]))(a),
        "id",
        "id_chunk_idx",
        "no forces rows",
    ),
    "nan in forces": (
        _set("ood_ads_forces", (7, 2), np.nan),
        "ood_ads",
        "ood_ads_forces",
        "(1 NaN, 0 inf) in 1 system (e.g. '2000_",
    ),
    "inf in energy": (_set("id_energy", 2, np.inf), "id", "id_energy", "0 NaN, 1 inf"),
    "integer energy": (
        lambda a: a.update(id_energy=a["id_energy"].astype(np.int64)),
        "id",
        "id_energy",
        "not floating",
    ),
    "float chunk_idx": (
        lambda a: a.update(ood_cat_chunk_idx=a["ood_cat_chunk_idx"].astype(np.float64)),
        "ood_cat",
        "ood_cat_chunk_idx",
        "not integer",
    ),
    "energy (n, 1)": (
        lambda a: a.update(ood_both_energy=a["ood_both_energy"][:, None]),
        "ood_both",
        "ood_both_energy",
        "flatten energy to shape (n,)",
    ),
    "energy count": (
        lambda a: a.update(id_energy=a["id_energy"][:-1]),
        "id",
        "id_energy",
        "values for",
    ),
    "forces shape": (
        lambda a: a.update(id_forces=a["id_forces"][:, :2]),
        "id",
        "id_forces",
        "not (rows, 3)",
    ),
    "empty split": (_empty_split, "ood_both", "ood_both_ids", "empty split"),
    "malformed s2ef id": (_set("id_ids", 2, "1002"), "id", "id_ids", "not of the form"),
    "integer ids": (
        lambda a: a.update(ood_ads_ids=np.arange(len(a["ood_ads_ids"]))),
        "ood_ads",
        "ood_ads_ids",
        "not str",
    ),
    "pickled ids": (
        lambda a: a.update(id_ids=a["id_ids"].astype(object)),
        "id",
        "id_ids",
        "pickled object array",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_validate_reports_each_defect(tmp_path, s2ef_arrays, name, capsys):
    corrupt, split, key, words = CORRUPTIONS[name]
    corrupt(s2ef_arrays)
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, **s2ef_arrays)  # object arrays are pickled, as np.savez allows
    defects = validate_submission(path, "s2ef")
    assert [(d.split, d.key) for d in defects if words in str(d)] == [(split, key)], defects
    assert main(["validate", str(path), "--task", "s2ef"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"[{split or '?'}] {key}: ") and "fix: " in line for line in lines)
    assert lines[-1].startswith(f"INVALID: {path} is not a valid s2ef submission")


def test_nonfinite_defect_names_the_systems(s2ef_arrays):
    chunk_idx, ids = s2ef_arrays["ood_cat_chunk_idx"], s2ef_arrays["ood_cat_ids"]
    rows = [0, chunk_idx[4], chunk_idx[4] + 1, chunk_idx[8] - 1]  # systems 0, 5, 5, 8
    s2ef_arrays["ood_cat_forces"][rows[:3], 0] = np.nan
    s2ef_arrays["ood_cat_forces"][rows[3]] = -np.inf
    [defect] = validate_submission(s2ef_arrays, "s2ef")
    assert defect.key == "ood_cat_forces"
    assert defect.problem == (
        f"6 non-finite values (3 NaN, 3 inf) in 3 systems "
        f"(e.g. '{ids[0]}', '{ids[5]}', '{ids[8]}')"
    )


def test_validate_reports_every_defect_at_once(tmp_path, s2ef_arrays, capsys):
    for name in ("missing key", "nan in forces", "float chunk_idx", "id in two splits"):
        CORRUPTIONS[name][0](s2ef_arrays)
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, **s2ef_arrays)
    keys = [d.key for d in validate_submission(path, "s2ef")]
    assert keys == ["id_forces", "ood_ads_forces", "ood_cat_chunk_idx", "ood_both_ids"]
    assert main(["validate", str(path), "--task", "s2ef"]) == 1
    assert "submission: 4 defects (listed above)" in capsys.readouterr().out


def _frame_id_in_is2re(arrays):
    arrays["ood_cat_ids"] = np.r_[["3000_0"], arrays["ood_cat_ids"][1:]]


def _empty_is2rs_system(arrays):
    _set("id_chunk_idx", 1, arrays["id_chunk_idx"][0])(arrays)


@pytest.mark.parametrize(
    ("task", "corrupt", "key", "words"),
    [
        ("is2rs", _set("ood_ads_pos", (4, 0), np.inf), "ood_ads_pos", "1 inf"),
        ("is2rs", lambda a: a.update(id_energy=a["id_ids"]), "id_energy", "belongs to s2ef/is2re"),
        ("is2rs", _empty_is2rs_system, "id_chunk_idx", "1 system no pos rows"),
        (
            "is2re",
            _frame_id_in_is2re,
            "ood_cat_ids",
            "1 id of the form {sid}_{fid} (e.g. '3000_0')",
        ),
        ("is2re", lambda a: a.update(id_forces=np.zeros((3, 3))), "id_forces", "belongs to s2ef"),
    ],
)
def test_validate_is2rs_is2re_defects(tmp_path, task, corrupt, key, words):
    arrays, _ = collect_predictions(task, split_files(tmp_path, task))
    assert validate_submission(arrays, task) == []
    corrupt(arrays)
    assert [d.key for d in validate_submission(arrays, task) if words in str(d)] == [key]


def test_validate_wrong_task_lists_keys(tmp_path, s2ef_arrays):
    path = tmp_path / "s2ef.npz"
    np.savez_compressed(path, **s2ef_arrays)
    defects = validate_submission(path, "is2rs")
    missing = {d.key for d in defects if d.problem == "missing key"}
    assert missing == {f"{s}_pos" for s in SPLITS}
    assert {d.key for d in defects if "belongs to s2ef" in d.problem} == {
        f"{s}_{k}" for s in SPLITS for k in ("energy", "forces")
    }


def test_validate_unreadable_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.npz"), "--task", "s2ef"]) == 2
    assert "not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["validate", str(garbage), "--task", "s2ef"]) == 2
    assert "ocp-graphpar: error: cannot read" in capsys.readouterr().err
    with pytest.raises(UserFacingError):
        validate_submission(garbage, "s2ef")
