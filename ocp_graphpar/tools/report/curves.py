"""Learning curves of a ``fairchem --mode train`` run, read from its TensorBoard logs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ocp_graphpar.errors import UserFacingError


@dataclass
class LearningCurves:
    """Scalars by tag (``train/loss``, ``val/forces_mae``, ...) as ``(steps, values)`` arrays."""

    run_dir: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __getitem__(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        if tag not in self.scalars:
            raise KeyError(f"{tag!r} was not logged; logged: {sorted(self.scalars)}")
        return self.scalars[tag]

    def last(self, tag: str) -> float:
        return float(self[tag][1][-1])

    def best(self, tag: str) -> float:
        return float(self[tag][1].min())


def read_learning_curves(run_dir: str | os.PathLike) -> LearningCurves:
    """Every scalar of the TensorBoard logs under ``run_dir/logs/tensorboard`` (the newest
    run there), e.g. from ``fairchem --mode train --run-dir RUN_DIR`` with ``logger: tensorboard``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(Path(run_dir).glob("logs/tensorboard/*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserFacingError(
            f"no TensorBoard logs under {Path(run_dir) / 'logs' / 'tensorboard'}: train with "
            "`logger: tensorboard` (as configs/s2ef/base.yml) and pass this --run-dir."
        )
    events = EventAccumulator(str(runs[-1]), size_guidance={"scalars": 0})
    events.Reload()
    curves = LearningCurves(run_dir=runs[-1])
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        curves.scalars[tag] = (
            np.array([p.step for p in points]),
            np.array([p.value for p in points], dtype=float),
        )
    return curves


def zero_force_mae(lmdb_dir: str | os.PathLike) -> float:
    """Force MAE (eV/Å) of predicting zero forces on an S2EF LMDB folder, over the free atoms'
    components: the ``forces_mae`` a model that learned nothing about forces would score."""
    from fairchem.core.datasets import LmdbDataset

    dataset = LmdbDataset({"src": str(lmdb_dir)})
    total, count = 0.0, 0
    for index in range(len(dataset)):
        sample = dataset[index]
        forces = sample.forces[sample.fixed == 0]
        total += float(forces.abs().sum())
        count += forces.numel()
    return total / count


def plot_learning_curves(
    curves: LearningCurves,
    out: str | os.PathLike,
    *,
    title: str,
    zero_force_baseline: float | None = None,
) -> Path:
    """A PNG with the training loss and the validation force MAE against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, mae_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps, loss = curves["train/loss"]
    loss_ax.plot(steps, loss, lw=1, color="tab:blue")
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    for tag, label, color in (
        ("train/forces_mae", "train (running mean)", "tab:blue"),
        ("val/forces_mae", "validation", "tab:orange"),
    ):
        if tag in curves.scalars:
            steps, mae = curves[tag]
            style = {"lw": 1, "alpha": 0.6} if tag.startswith("train") else {"marker": "o"}
            mae_ax.plot(steps, mae, label=label, color=color, **style)
    if zero_force_baseline is not None:
        mae_ax.axhline(
            zero_force_baseline, ls="--", color="gray", label="predict zero forces (val)"
        )
    mae_ax.set(xlabel="step", ylabel="force MAE (eV/Å)", yscale="log", title="force MAE")
    mae_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
