"""Data tools: ASE trajectories (or an EMT demo) to LMDBs that fairchem-core 1.x reads.

Importing this package needs numpy, torch, torch_geometric, ase, lmdb and tqdm, but not fairchem
or torch_scatter: the files it writes are read later by fairchem's ``LmdbDataset``.

Layout of a dataset folder ``DIR``::

    DIR/s2ef/train/   data.lmdb + metadata.npz   every frame of the training systems
    DIR/s2ef/val/     data.lmdb + metadata.npz   every frame of the validation systems
    DIR/is2rs/val/    data.lmdb + metadata.npz   one initial structure per validation system
    DIR/linear_reference.json, .npz              per-element energies (--linear-reference only)
    DIR/dataset.json                             manifest: options, splits, every system's sid

Splits are by system (a system's frames are all in train or all in val), drawn with ``seed``.
In fairchem configs use ``dataset: {train: {src: DIR/s2ef/train}, val: {src: DIR/s2ef/val}}`` and,
for relaxations (``--mode run-relaxations`` / ``eval_relaxations``), ``relax_dataset: {src:
DIR/is2rs/val}``.

``data.lmdb`` holds pickled ``torch_geometric.data.Data`` under ascii keys ``"0"`` .. ``"N-1"``
(plus ``"length"``: N); ``metadata.npz`` holds ``natoms`` (N,) int64 in the same order, for
fairchem's balanced batch sampler. Fields of every sample (``n`` atoms):

=================  ==============  ===========================================================
``atomic_numbers`` (n,) float32    atomic numbers (float, as OC20's LMDBs)
``pos``            (n, 3) float32  positions, Å, exactly as in the input (not wrapped)
``cell``           (1, 3, 3) f32   cell vectors, Å (rows)
``natoms``         int             n
``tags``           (n,) int64      OC20 tags: 0 fixed slab, 1 free slab, 2 adsorbate
``fixed``          (n,) float32    1.0 where a ``FixAtoms`` constraint holds the atom, else 0.0
``energy``, ``y``  float           potential energy, eV (raw, or referenced, see below)
``forces``         (n, 3) float32  raw forces, eV/Å: ``get_forces(apply_constraint=False)``,
                                   so fixed atoms keep their DFT forces (mask with ``fixed``)
``sid``            int             system id: first digits of the name (``random1000100`` ->
                                   1000100), or the sorted-name index if that is not unique
``system``         str             system name (the file stem)
``fid``            int             frame index in the trajectory (S2EF samples only)
=================  ==============  ===========================================================

IS2RS samples (``is2rs/val``) are the initial frame (``pos``, ``energy``/``y``, ``forces`` of
frame 0) plus the relaxed targets fairchem's ``OCPTrainer.run_relaxations`` reads:

=================  ==============  ===========================================================
``pos_relaxed``    (n, 3) float32  positions of the last frame, Å
``energy_relaxed`` float           last frame's energy, eV (what fairchem 1.x's IS2RE/IS2RS
``y_relaxed``                      metrics compare against; ``y_relaxed`` for older configs)
``y_init``         float           frame 0's energy, eV (same as ``energy``)
=================  ==============  ===========================================================

IS2RS samples carry no ``fid``: fairchem keys predictions ``"{sid}_{fid}"`` when ``fid`` exists,
and IS2RE/IS2RS results are keyed by system alone. No ``pbc`` field is stored: fairchem's models
and relaxations treat every structure as periodic in all three directions, as OC20's DFT cells
are (the demo's slabs are built periodic in z too, with vacuum between images).

With ``linear_reference`` the per-element energies are fit on the training frames only
(least squares, ``E ~ sum_Z count_Z * coef_Z``), saved as ``linear_reference.json`` (readable)
and ``linear_reference.npz`` (``element_references`` (119,), loadable by fairchem's
``create_element_references``), and every stored energy is ``raw - sum over atoms coef[Z]``.
"""

from __future__ import annotations

from ocp_graphpar.tools.data.convert import (
    DatasetSummary,
    LinearReference,
    SplitSummary,
    assign_sids,
    covering_split_seed,
    fit_linear_reference,
    in_domain_split_seed,
    split_systems,
    systems_to_lmdbs,
    trajectories_to_lmdbs,
)
from ocp_graphpar.tools.data.demo import demo_systems, make_demo_dataset
from ocp_graphpar.tools.data.lmdb_writer import staged_output, write_lmdb
from ocp_graphpar.tools.data.reading import read_trajectories
from ocp_graphpar.tools.data.samples import (
    System,
    derive_oc20_tags,
    is2rs_sample,
    s2ef_sample,
    select_frames,
    system_from_frames,
    thin_frames,
)

__all__ = [
    "DatasetSummary",
    "LinearReference",
    "SplitSummary",
    "System",
    "assign_sids",
    "covering_split_seed",
    "demo_systems",
    "derive_oc20_tags",
    "fit_linear_reference",
    "in_domain_split_seed",
    "is2rs_sample",
    "make_demo_dataset",
    "read_trajectories",
    "s2ef_sample",
    "select_frames",
    "split_systems",
    "staged_output",
    "system_from_frames",
    "systems_to_lmdbs",
    "thin_frames",
    "trajectories_to_lmdbs",
    "write_lmdb",
]
