"""The fairchem-core 1.10 defects the plugin fixes stay fixed (each test fails without its fix)."""

from __future__ import annotations

import inspect
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from fairchem.core.common import utils
from fairchem.core.common.relaxation.optimizers.lbfgs_torch import LBFGS
from fairchem.core.trainers import OCPTrainer, base_trainer

import ocp_graphpar  # noqa: F401  (installs the fixes)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed while writing")


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    for save in (utils.save_checkpoint, base_trainer.save_checkpoint):
        save({"step": 1, "weights": torch.ones(1000)}, str(tmp_path), "checkpoint.pt")
        with pytest.raises(RuntimeError, match="killed while writing"):
            save({"step": 2, "weights": torch.zeros(1000), "x": Unpicklable()}, str(tmp_path))
        assert torch.load(tmp_path / "checkpoint.pt")["step"] == 1
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
        mode = (tmp_path / "checkpoint.pt").stat().st_mode & 0o777
        assert mode == 0o666 & ~current_umask()  # as torch.save would create it, not 0600


def trainer_stub(results_dir) -> SimpleNamespace:
    return SimpleNamespace(config={"cmd": {"results_dir": str(results_dir)}}, name="ocp")


def test_interrupted_prediction_write_leaves_no_prediction_file(tmp_path, monkeypatch):
    predictions = {"ids": ["1_0", "2_0"], "energy": [1.0, 2.0]}
    trainer = trainer_stub(tmp_path)
    base_trainer.BaseTrainer.save_results(trainer, predictions, "predictions", ["ids", "energy"])
    with np.load(tmp_path / "ocp_predictions.npz") as written:
        assert written["ids"].tolist() == ["1_0", "2_0"]
    assert trainer.config["cmd"]["results_dir"] == str(tmp_path)

    def dies_while_writing(path, **arrays):
        with open(path, "wb") as stream:
            stream.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        base_trainer.BaseTrainer.save_results(trainer_stub(tmp_path / "again"), predictions, "p")
    assert not (tmp_path / "again" / "ocp_p.npz").exists()


def test_relaxations_write_through_the_staged_results_folder():
    assert getattr(OCPTrainer.run_relaxations, "_ocp_graphpar_fixed", False)


def test_relaxation_optimizer_settings_are_ones_fairchems_lbfgs_accepts():
    """fairchem passes ``task.relax_opt`` to ``LBFGS(**relax_opt)``; upstream's example configs
    carry a ``name`` key that makes it raise TypeError."""
    from trainer_cases import REPO

    accepted = set(inspect.signature(LBFGS).parameters)
    settings = yaml.safe_load((REPO / "configs" / "is2rs" / "base.yml").read_text())
    assert set(settings["task"]["relax_opt"]) <= accepted
