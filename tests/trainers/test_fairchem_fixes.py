"""The fairchem-core 1.10 defects the plugin's trainer fixes stay fixed (each test fails without
its fix), and importing the plugin leaves fairchem and torch as they were."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from fairchem.core.common.relaxation.optimizers.lbfgs_torch import LBFGS
from fairchem.core.trainers import OCPTrainer

from ocp_graphpar.atomic import current_umask
from ocp_graphpar.trainers import GraphParallelTrainer

REPO = Path(__file__).resolve().parents[2]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed while writing")


def bare_trainer(**attributes) -> GraphParallelTrainer:
    """The plugin's trainer without ``__init__``: the attributes given, and what upstream's
    ``save`` reads. The methods under test are the trainer's, over upstream's, unchanged."""
    trainer = GraphParallelTrainer.__new__(GraphParallelTrainer)
    model = torch.nn.Linear(4, 1)
    defaults = {
        "is_debug": False,
        "model": model,
        "normalizers": {},
        "elementrefs": {},
        "scaler": None,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "ema": None,
        "step": 1,
        "epoch": 0.5,
        "scheduler": SimpleNamespace(scheduler_type="Null"),
        "best_val_metric": 1e9,
        "evaluation_metrics": {},
        "evaluator": SimpleNamespace(task_primary_metric={"ocp": "forces_mae"}),
        "name": "ocp",
        "device": "cpu",
        "train_dataset": None,
    }
    vars(trainer).update({**defaults, **attributes})
    return trainer


@pytest.mark.parametrize(
    ("checkpoint_file", "training_state"),
    [("checkpoint.pt", True), ("best_checkpoint.pt", False)],
)
def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path, checkpoint_file, training_state
):
    config = {"cmd": {"checkpoint_dir": str(tmp_path)}}
    trainer = bare_trainer(config=config)
    path = trainer.save(checkpoint_file=checkpoint_file, training_state=training_state)
    assert path == str(tmp_path / checkpoint_file)

    trainer.step, config["killed"] = 2, Unpicklable()  # torch.save fails half-way
    with pytest.raises(RuntimeError, match="killed while writing"):
        trainer.save(checkpoint_file=checkpoint_file, training_state=training_state)
    written = torch.load(tmp_path / checkpoint_file, weights_only=False)
    assert written["config"]["cmd"]["checkpoint_dir"] == str(tmp_path)  # the real folder
    assert written.get("step", 1) == 1
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_file]
    mode = (tmp_path / checkpoint_file).stat().st_mode & 0o777
    assert mode == 0o666 & ~current_umask()  # as torch.save would create it, not 0600


def test_only_the_master_rank_writes_checkpoints(tmp_path):
    trainer = bare_trainer(config={"cmd": {"checkpoint_dir": str(tmp_path)}}, is_debug=True)
    assert trainer.save() is None  # upstream writes nothing in a --debug run; neither do we
    assert list(tmp_path.iterdir()) == []


def test_interrupted_prediction_write_leaves_no_prediction_file(tmp_path, monkeypatch):
    predictions = {"ids": ["1_0", "2_0"], "energy": [1.0, 2.0]}
    trainer = bare_trainer(config={"cmd": {"results_dir": str(tmp_path)}})
    trainer.save_results(predictions, "predictions", ["ids", "energy"])
    with np.load(tmp_path / "ocp_predictions.npz") as written:
        assert written["ids"].tolist() == ["1_0", "2_0"]
    assert trainer.config["cmd"]["results_dir"] == str(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ocp_predictions.npz"]

    def dies_while_writing(path, **arrays):
        with open(path, "wb") as stream:
            stream.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", dies_while_writing)
    again = tmp_path / "again"
    again.mkdir()  # upstream's __init__ creates results_dir
    with pytest.raises(KeyboardInterrupt):
        bare_trainer(config={"cmd": {"results_dir": str(again)}}).save_results(predictions, "p")
    assert list(again.iterdir()) == []


def test_relaxations_write_through_the_staged_results_folder(tmp_path, monkeypatch):
    """Upstream's ``run_relaxations`` (replaced here by a stand-in that writes where upstream
    writes) sees a staging folder; the file appears in ``results_dir`` once complete."""
    seen = []

    def run_relaxations(self):
        seen.append(self.config["cmd"]["results_dir"])
        np.savez_compressed(Path(seen[-1]) / "relaxed_positions.npz", ids=["1"])

    monkeypatch.setattr(OCPTrainer, "run_relaxations", run_relaxations)
    trainer = bare_trainer(config={"cmd": {"results_dir": str(tmp_path)}})
    trainer.run_relaxations()
    assert seen == [str(tmp_path / ".partial")]
    assert trainer.config["cmd"]["results_dir"] == str(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["relaxed_positions.npz"]


def test_interrupted_normaliser_write_keeps_the_previous_file(tmp_path, monkeypatch):
    def trainer() -> GraphParallelTrainer:
        normalizer = {"energy": {"mean": 1.0, "stdev": 2.0}}
        return bare_trainer(
            config={
                "dataset": {"transforms": {"normalizer": normalizer}},
                "cmd": {"checkpoint_dir": str(tmp_path), "seed": 0},
            }
        )

    trainer().load_references_and_normalizers()
    assert [p.name for p in tmp_path.iterdir()] == ["normalizers.pt"]
    saved = torch.load(tmp_path / "normalizers.pt", weights_only=False)

    def dies_while_writing(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        trainer().load_references_and_normalizers()
    assert [p.name for p in tmp_path.iterdir()] == ["normalizers.pt"]
    monkeypatch.undo()
    assert torch.load(tmp_path / "normalizers.pt", weights_only=False).keys() == saved.keys()


def test_relaxation_optimizer_settings_are_ones_fairchems_lbfgs_accepts():
    """fairchem passes ``task.relax_opt`` to ``LBFGS(**relax_opt)``; upstream's example configs
    carry a ``name`` key that makes it raise TypeError."""
    accepted = set(inspect.signature(LBFGS).parameters)
    settings = yaml.safe_load((REPO / "configs" / "is2rs" / "base.yml").read_text())
    assert set(settings["task"]["relax_opt"]) <= accepted


UPSTREAM_SNAPSHOT = """
import importlib, json, sys

MODULES = [
    "fairchem.core.common.utils", "fairchem.core.common.distutils",
    "fairchem.core.common.gp_utils", "fairchem.core._cli",
    "fairchem.core.trainers.base_trainer", "fairchem.core.trainers.ocp_trainer",
    "fairchem.core.modules.normalization._load_utils",
    "torch.distributed", "torch.distributed.distributed_c10d",
]


def snapshot():
    callables = {}
    for name in MODULES:
        for attr, value in vars(importlib.import_module(name)).items():
            if callable(value):
                callables[f"{name}.{attr}"] = id(value)
    from fairchem.core.trainers import BaseTrainer, OCPTrainer
    for cls in (BaseTrainer, OCPTrainer):
        for attr, value in vars(cls).items():
            callables[f"{cls.__qualname__}.{attr}"] = id(value)
    return callables


before = snapshot()
import ocp_graphpar
import ocp_graphpar.datasets, ocp_graphpar.launch, ocp_graphpar.models
import ocp_graphpar.parallel, ocp_graphpar.trainers
after = snapshot()
changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
print(json.dumps({"compared": len(before), "changed": changed}))
"""


def test_importing_the_plugin_leaves_fairchem_and_torch_untouched():
    """Every callable of the modules the old import-time fixes patched, and every attribute of
    fairchem's trainer classes, is the same object before and after importing the plugin (in a
    fresh interpreter; the registry gaining the plugin's names is fairchem's extension point)."""
    env = {k: v for k, v in os.environ.items() if k != "OCP_GRAPHPAR_CLI_HOOKS"}
    done = subprocess.run(
        [sys.executable, "-c", UPSTREAM_SNAPSHOT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["compared"] > 500
    assert result["changed"] == []


def test_a_periodic_checkpoint_holds_the_schedule_of_the_step_it_follows(tmp_path):
    """Upstream saves ``optim.checkpoint_every``'s checkpoint after step ``s``'s update but
    before its ``scheduler.step()``: the saved schedule must be the one after step ``s`` (what
    a resumed run needs), and the running trainer's must stay as upstream will step it."""
    from fairchem.core.modules.scheduler import LRScheduler

    optim = {
        "lr_initial": 1e-3,
        "warmup_steps": 10,
        "warmup_factor": 0.2,
        "lr_milestones": [100],
        "lr_gamma": 0.5,
    }

    def schedule() -> tuple[torch.optim.Optimizer, LRScheduler]:
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=optim["lr_initial"])
        return optimizer, LRScheduler(optimizer, optim)

    optimizer, scheduler = schedule()
    trainer = bare_trainer(
        config={"cmd": {"checkpoint_dir": str(tmp_path)}},
        optimizer=optimizer,
        scheduler=scheduler,
    )
    reference_optimizer, reference = schedule()
    with trainer.training_loop():  # as in OCPTrainer.train:
        for step in range(1, 6):  # update, counter, periodic save, scheduler step
            trainer.step = step
            if step == 3:
                trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
            scheduler.step()
            reference.step()
            assert optimizer.param_groups[0]["lr"] == reference_optimizer.param_groups[0]["lr"]
            if step == 3:
                after_step = reference.scheduler.state_dict()

    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 3
    assert saved["scheduler"]["last_epoch"] == after_step["last_epoch"] == 3
    assert saved["scheduler"]["_last_lr"] == after_step["_last_lr"]
    resumed_optimizer, resumed = schedule()
    resumed.scheduler.load_state_dict(saved["scheduler"])
    for _ in range(2):  # steps 4 and 5 of the resumed run
        resumed.step()
    assert resumed.scheduler.get_last_lr() == reference.scheduler.get_last_lr()
