"""The demo's training recipe learns: a short run beats predicting zero forces by a wide margin.

The demo's own stages (data, train at gp 2 through the ``fairchem`` CLI, predict) run with
fewer steps than ``make demo``, on the embedded EMT set and on trajectories unlike it (fcc(110),
800 K MD then relaxation: ``emt_trajectories.py``), so a recipe tuned to one set alone fails.
The floors of a full run (0.5 on the embedded set, 0.35 on such trajectories) are checked by
``scripts/demo_recipe_check.py``; here the bound is looser for the shorter run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.emt_trajectories import write_trajectories

from ocp_graphpar.tools.demo import DemoOptions, DemoPaths, stages

#: Force MAE / zero-force MAE on held-out systems after about 200 steps: bounds about 30% above
#: what was measured (0.47 on 16 embedded systems, 0.64 on 10 trajectories, with the normaliser
#: still at identity; fitting it moved the full runs from 0.26 to 0.25 and 0.27 to 0.29); a
#: model that learns nothing scores about 1 (the demo's recipe before this one: 0.97).
SHORT_RUN_FORCE_RATIO = {"embedded": 0.6, "trajectories": 0.8}
STEPS = 200


def _options(source: str, tmp_path: Path) -> DemoOptions:
    if source == "embedded":
        return DemoOptions(out=tmp_path / "demo", systems=16, steps=STEPS, evaluations=1)
    write_trajectories(tmp_path / "trajectories", 10, pairs=4, md_steps=40, relax_steps=40)
    return DemoOptions(
        out=tmp_path / "demo", data=(tmp_path / "trajectories",), steps=STEPS, evaluations=1
    )


@pytest.mark.slow
@pytest.mark.parametrize("source", ["embedded", "trajectories"])
def test_short_training_beats_predicting_zero_forces(source, tmp_path):
    options = _options(source, tmp_path)
    paths = DemoPaths(options.out)
    data = stages.build_data(options, paths)
    trained = stages.train(options, paths, data, resume=False)
    scores = stages.predict(paths, trained)["metrics"]
    print(f"\n{source}: {data['train_frames']} training frames, {scores}")
    log = (paths.logs / "train.log").read_text()
    assert "Estimating mean and rmsd" in log and "rmsd=1.0." not in log  # the normaliser is fit
    assert scores["frames"] == data["val_frames"]
    assert scores["forces_over_zero_force"] <= SHORT_RUN_FORCE_RATIO[source]
    assert scores["forces_cosine"] > 0.5
