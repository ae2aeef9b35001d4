"""Datasets as a ``fairchem`` run needs them: only its mode's splits, each surveyed first.

fairchem builds every dataset a config names, whatever the mode, so ``--mode predict`` with
only ``--dataset.test.src`` stops at ``No LMDBs found in 'data/s2ef/train'``, and a folder it
cannot use fails later inside a spawned rank (``KeyError: 'energy'``). For configs whose
datasets use :class:`~ocp_graphpar.datasets.OC20LmdbDataset`, :func:`prepare_datasets` runs in
the launching process, before any rank exists: it drops the splits the mode does not read
(keeping the training split's settings, which carry the normalisation, less any ``fit:`` of
normalisers or element references, which such a mode takes from its checkpoint) and surveys
each split it keeps (:func:`~ocp_graphpar.datasets.survey_folder`). Configs of other formats pass through.
"""

from __future__ import annotations

from fairchem.core.common.registry import registry

from ocp_graphpar.datasets import OC20LmdbDataset, survey_folder
from ocp_graphpar.errors import UserFacingError

#: Splits each ``--mode`` reads, the one it cannot run without first. ``relax`` joins training
#: only with ``task.eval_relaxations``.
MODE_SPLITS = {
    "train": ("train", "val", "test"),
    "validate": ("val",),
    "predict": ("test",),
    "run-relaxations": ("relax",),
}
#: Splits whose samples must carry the targets of ``outputs``; the others need inputs only.
LABELLED_SPLITS = ("train", "val")
#: Transforms fairchem can fit on the training split (``fit:``); a mode that reads no training
#: split takes them from the checkpoint (which stores both) instead of fitting on nothing.
FITTED_TRANSFORMS = ("normalizer", "element_references")


def uses_our_format(config: dict) -> bool:
    """Whether the config's training split (which the others inherit) reads OC20LmdbDataset."""
    train = (config.get("dataset") or {}).get("train") or {}
    try:
        dataset_cls = registry.get_dataset_class(train.get("format", "lmdb"))
    except Exception:  # fairchem raises its own error for an unknown format, later
        return False
    return isinstance(dataset_cls, type) and issubclass(dataset_cls, OC20LmdbDataset)


def splits_for(config: dict) -> tuple[str, ...]:
    mode = config.get("mode", "train")
    splits = MODE_SPLITS.get(mode, ())
    if mode == "train" and (config.get("task") or {}).get("eval_relaxations"):
        splits += ("relax",)
    return splits


def drop_fits(train: dict) -> None:
    """Take the ``fit:`` entries out of the training split's transforms (in place)."""
    transforms = train.get("transforms") or {}
    for name in FITTED_TRANSFORMS:
        settings = transforms.get(name)
        if isinstance(settings, dict) and "fit" in settings:
            rest = {key: value for key, value in settings.items() if key != "fit"}
            if rest:
                transforms[name] = rest
            else:
                del transforms[name]


def prepare_datasets(config: dict) -> dict:
    """Keep the mode's splits of ``config["dataset"]`` and survey them (in place; returned)."""
    if not uses_our_format(config) or config.get("mode") not in MODE_SPLITS:
        return config
    datasets = config["dataset"]
    wanted = splits_for(config)
    for split in list(datasets):
        if split not in wanted:
            if split == "train":  # its settings (normalizer, format) are the others' defaults
                datasets[split].pop("src", None)
                drop_fits(datasets[split])
            else:
                del datasets[split]
    required = MODE_SPLITS[config["mode"]][0]
    targets = [name for name in config.get("outputs", {}) if name in ("energy", "forces")]
    for split in wanted:
        own = datasets.get(split) or {}
        if "src" not in own:
            if split == required:
                raise UserFacingError(
                    f"--mode {config['mode']} reads dataset.{split}, and the config gives no "
                    f"folder for it. Pass --dataset.{split}.src=FOLDER."
                )
            continue
        # as fairchem builds it: the training split's settings, then the split's own
        settings = own if own.get("use_train_settings") is False else {**datasets["train"], **own}
        survey_folder(
            settings["src"],
            where=f"dataset.{split}.src",
            needs=targets if split in LABELLED_SPLITS else (),
            energy_target=settings.get("energy_target", "frame"),
        )
    return config
