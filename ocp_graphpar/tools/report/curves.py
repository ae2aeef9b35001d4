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


def plot_learning_curves(
    curves: LearningCurves,
    out: str | os.PathLike,
    *,
    title: str,
    zero_force_baseline: float | None = None,
    reference_energy_baseline: float | None = None,
) -> Path:
    """A PNG with the training loss, and the force and energy MAE against the step, beside the
    baselines given (predicting zero forces; the per-element reference energy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, force_ax, energy_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    steps, loss = curves["train/loss"]
    loss_ax.plot(steps, loss, lw=1, color="tab:blue")
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    for ax, quantity, baseline, baseline_label, unit in (
        (force_ax, "forces", zero_force_baseline, "predict zero forces (val)", "eV/Å"),
        (energy_ax, "energy", reference_energy_baseline, "per-element reference (val)", "eV"),
    ):
        for split, label, color in (
            ("train", "train (running mean)", "tab:blue"),
            ("val", "validation", "tab:orange"),
        ):
            tag = f"{split}/{quantity}_mae"
            if tag in curves.scalars:
                steps, mae = curves[tag]
                style = {"lw": 1, "alpha": 0.6} if split == "train" else {"marker": "o"}
                ax.plot(steps, mae, label=label, color=color, **style)
        if baseline is not None:
            ax.axhline(baseline, ls="--", color="gray", label=baseline_label)
        ax.set(
            xlabel="step", ylabel=f"{quantity} MAE ({unit})", yscale="log", title=f"{quantity} MAE"
        )
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
