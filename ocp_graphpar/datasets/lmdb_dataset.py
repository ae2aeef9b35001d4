"""fairchem's ``LmdbDataset`` for folders in either layout (see :mod:`.layouts`).

Configs select it with ``format: ocp_graphpar.datasets.OC20LmdbDataset`` (or ``oc20_lmdb`` once
the plugin is imported); the user passes only ``src``. Everything else is upstream's: one or
many ``.lmdb`` files per folder, old PyG pickles converted, ``key_mapping`` and transforms.
"""

from __future__ import annotations

from fairchem.core.common.registry import registry
from fairchem.core.datasets.lmdb_dataset import LmdbDataset

from ocp_graphpar.datasets.layouts import ENERGY_TARGETS
from ocp_graphpar.datasets.survey import check_finite, survey_folder
from ocp_graphpar.errors import UserFacingError


@registry.register_dataset("oc20_lmdb")
class OC20LmdbDataset(LmdbDataset):
    """Samples of an ocp-graphpar or OC20-released LMDB folder, under fairchem 1.x's keys.

    Config keys beyond upstream's:
        energy_target: ``frame`` (default: a sample's ``energy`` is its own energy) or
            ``relaxed`` (``energy`` is the relaxed structure's energy: direct IS2RE training).
    """

    def __init__(self, config: dict) -> None:
        self.energy_target = config.get("energy_target", "frame")
        src = config.get("src")
        if isinstance(src, (list, tuple)):
            if len(src) != 1:
                raise UserFacingError(f"dataset src {src}: give one folder per split.")
            src = src[0]
        self.survey = survey_folder(
            src, where=f"dataset src {src}", energy_target=self.energy_target, check_samples=0
        )
        super().__init__(config)

    def __getitem__(self, idx: int):
        data = super().__getitem__(idx)
        for stored, name in self.survey.layout.renames.items():
            if stored in data and name not in data:
                data[name] = data[stored]
                del data[stored]
        check_finite(data, self.survey.layout, where=f"sample {idx} of {self.survey.path}")
        if self.energy_target != "frame":
            target = ENERGY_TARGETS[self.energy_target]
            if target in data:
                data.energy = data[target]
            elif "energy" in data:  # a test split: no relaxed energy, and no other stands in
                del data["energy"]
        return data
