"""OC20's released LMDB layout, written from ``../shared/data/oc20_mini`` as the OCP scripts did.

The OCP preprocessing scripts (2020-21) turned each frame into a torch_geometric ``Data`` with
fairchem's ``AtomsToGraphs`` (6 Å, 50 neighbours, edges stored), named the targets ``y`` and
``force`` (IS2RE/IS2RS: ``y_init``, ``y_relaxed``, ``pos_relaxed``), subtracted reference
energies, and pickled the objects with the PyG of that time (attributes in ``__dict__``, no
``_store``) into ``data.NNNN.lmdb`` files beside ``data_log.NNNN.txt``. This module does the
same, so the tests read what users download.
"""

from __future__ import annotations

import copyreg
import pickle
from collections.abc import Sequence
from pathlib import Path

import lmdb
import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Data

from ocp_graphpar.tools.data import System, fit_linear_reference, read_trajectories, thin_frames

#: PyG 1.x ``Data`` attributes that were ``None`` unless set, pickled as such.
_PYG1_EMPTY = ("x", "edge_attr", "normal", "face", "__num_nodes__")


class _Pyg1Data:
    """Pickles as a PyG 1.x ``Data``: class ``torch_geometric.data.data.Data``, state a dict."""

    def __init__(self, fields: dict) -> None:
        self.fields = fields

    def __reduce__(self):
        state = dict.fromkeys(_PYG1_EMPTY) | self.fields
        return copyreg._reconstructor, (Data, object, None), state


def pyg1_pickle(fields: dict) -> bytes:
    return pickle.dumps(_Pyg1Data(fields), protocol=2)


def graph_fields(system: System, frame: int) -> dict:
    """Structure and stored edges of one frame, as ``AtomsToGraphs(max_neigh=50, radius=6)``."""
    from fairchem.core.preprocessing import AtomsToGraphs

    atoms = Atoms(
        numbers=system.numbers,
        positions=system.positions[frame],
        cell=system.cells[frame],
        pbc=True,
    )
    a2g = AtomsToGraphs(max_neigh=50, radius=6, r_energy=False, r_forces=False, r_edges=True)
    data = a2g.convert(atoms)
    fields = {
        key: data[key]
        for key in ("atomic_numbers", "pos", "cell", "natoms", "edge_index", "cell_offsets")
    }
    fields["neighbors"] = int(data.edge_index.shape[1])
    fields["tags"] = torch.from_numpy(system.tags.astype(np.int64))
    fields["fixed"] = torch.from_numpy(system.fixed.astype(np.float32))
    return fields


def write_lmdb_file(path: Path, records: Sequence[bytes], *, length_entry: bool = True) -> None:
    env = lmdb.open(str(path), map_size=1 << 30, subdir=False, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for index, record in enumerate(records):
            txn.put(str(index).encode("ascii"), record)
        if length_entry:
            txn.put(b"length", pickle.dumps(len(records), protocol=-1))
    env.sync()
    env.close()


def oc20_systems(names: Sequence[str], *, stride: int) -> list[System]:
    from helpers.oc20 import require_oc20_mini

    root = require_oc20_mini()
    systems = read_trajectories([root / f"{name}.traj" for name in names], progress=False)
    return [thin_frames(system, stride) for system in systems]


def s2ef_records(systems: Sequence[System], reference) -> list[tuple[bytes, str]]:
    """One pickled S2EF sample per frame and its ``data_log`` line (``sid,fid,reference``)."""
    records = []
    for system in systems:
        sid = int(system.name.removeprefix("random"))
        offset = reference.offset(system.numbers)
        for frame in range(system.n_frames):
            fields = graph_fields(system, frame)
            fields["y"] = float(system.energies[frame] - offset)
            fields["force"] = torch.from_numpy(system.forces[frame].astype(np.float32))
            fields["sid"], fields["fid"] = sid, frame
            records.append((pyg1_pickle(fields), f"random{sid},frame{frame},{offset:.6f}"))
    return records


def write_s2ef_folder(
    folder: Path, systems: Sequence[System], reference, *, files: int = 2
) -> Path:
    """``data.0000.lmdb`` .. in the released S2EF layout, samples dealt out to ``files`` files
    in order; only the first file has a ``length`` entry (fairchem reads both kinds)."""
    folder.mkdir(parents=True)
    records = s2ef_records(systems, reference)
    for index, chunk in enumerate(np.array_split(np.arange(len(records)), files)):
        write_lmdb_file(
            folder / f"data.{index:04d}.lmdb",
            [records[i][0] for i in chunk],
            length_entry=index == 0,
        )
        (folder / f"data_log.{index:04d}.txt").write_text(
            "".join(records[i][1] + "\n" for i in chunk)
        )
    return folder


def write_is2rs_folder(folder: Path, systems: Sequence[System], reference) -> Path:
    """``data.lmdb`` in the released IS2RE/IS2RS layout: each system's initial structure with
    ``y_init``, ``y_relaxed`` and ``pos_relaxed`` (no ``fid``)."""
    folder.mkdir(parents=True)
    records = []
    for system in systems:
        offset = reference.offset(system.numbers)
        fields = graph_fields(system, 0)
        fields["sid"] = int(system.name.removeprefix("random"))
        fields["y_init"] = float(system.energies[0] - offset)
        fields["y_relaxed"] = float(system.energies[-1] - offset)
        fields["pos_relaxed"] = torch.from_numpy(system.positions[-1].astype(np.float32))
        records.append(pyg1_pickle(fields))
    write_lmdb_file(folder / "data.lmdb", records)
    return folder


def write_released_dataset(
    root: Path, *, train: Sequence[str], val: Sequence[str], stride: int = 40
) -> Path:
    """``root/s2ef/train``, ``root/s2ef/val`` (two files each) and ``root/is2rs/val``, from
    the named oc20_mini systems, every ``stride``-th frame, energies referenced per element."""
    train_systems = oc20_systems(train, stride=stride)
    val_systems = oc20_systems(val, stride=stride)
    reference = fit_linear_reference(train_systems + val_systems)
    write_s2ef_folder(root / "s2ef" / "train", train_systems, reference)
    write_s2ef_folder(root / "s2ef" / "val", val_systems, reference)
    write_is2rs_folder(root / "is2rs" / "val", val_systems, reference)
    return root
