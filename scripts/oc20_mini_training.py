"""Train the demo-width GemNet-XL at gp 2 on real OC20 DFT frames with the demo's recipe, and
report.

Converts ``../shared/data/oc20_mini`` (24 relaxations) into S2EF LMDBs (held-out frames, or
held-out systems with ``--split systems``), trains ``configs/s2ef/gemnet_xl_demo.yml`` through
the unmodified ``fairchem`` CLI on 2 CPU ranks with ``--gp-gpus 2`` on the demo's schedule
(whole epochs near ``--steps``, warm-up and step decay), predicts the held-out frames with the
final (EMA) model, and writes to ``docs/``: the learning curves (PNG), and the held-out force
MAE against predicting zero forces, the energy MAE against the per-element reference energy
and the force cosine (JSON and Markdown)::

    .venv/bin/python scripts/oc20_mini_training.py              # about 10 minutes on 2 cores
    .venv/bin/python scripts/oc20_mini_training.py --steps 200  # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/s2ef/gemnet_xl_demo.yml"
VAL_FRACTION = 0.2


def hold_out_frames(system, every: int):
    """(training, held-out) frames of one relaxation: every ``every``-th frame is held out."""
    from ocp_graphpar.tools.data import select_frames

    held = list(range(every // 2, system.n_frames, every))
    kept = [i for i in range(system.n_frames) if i not in set(held)]
    return select_frames(system, kept), select_frames(system, held)


def build_dataset(source: Path, out: Path, args: argparse.Namespace) -> tuple[dict, str]:
    """S2EF LMDBs ``out/{train,val}``; returns frame counts and a description of the split."""
    from ocp_graphpar.tools.data import (
        fit_linear_reference,
        in_domain_split_seed,
        read_trajectories,
        systems_to_lmdbs,
        thin_frames,
    )

    systems = [
        thin_frames(s, args.stride)
        for s in read_trajectories([source])
        if s.n_atoms <= args.max_atoms
    ]
    if args.split == "systems":
        seed = in_domain_split_seed(systems, VAL_FRACTION)
        train, val = split_by_system(systems, seed)
        split = (
            f"by system: validation systems {sorted(s.name for s in val)} (split seed {seed}, "
            "the first whose validation systems hold no element that training lacks)"
        )
    else:
        pairs = [hold_out_frames(s, args.hold_out_every) for s in systems]
        train, val = [t for t, _ in pairs], [v for _, v in pairs if v.n_frames]
        split = (
            f"by frame: every {args.hold_out_every}th frame of each of the {len(systems)} "
            "relaxations held out for validation"
        )
    reference = fit_linear_reference(train)  # on training frames only

    def referenced(group):
        return [
            dataclasses.replace(s, energies=s.energies - reference.offset(s.numbers)) for s in group
        ]

    counts = {}
    for name, group in (("train", train), ("val", val)):
        summary = systems_to_lmdbs(
            referenced(group), out / name, val_fraction=0.0, overwrite=True, progress=False
        )
        counts[name] = summary.splits["s2ef/train"].samples
    return counts, split


def split_by_system(systems, seed: int):
    from ocp_graphpar.tools.data.convert import split_systems

    train_names, _ = split_systems([s.name for s in systems], VAL_FRACTION, seed)
    train = [s for s in systems if s.name in set(train_names)]
    return train, [s for s in systems if s.name not in set(train_names)]


def fairchem(
    mode: str, run_dir: Path, overrides: list[str], checkpoint: Path | None = None
) -> None:
    """One ``fairchem`` run at gp 2 on 2 CPU ranks (output streamed; Ctrl-C stops every rank)."""
    from ocp_graphpar.tools.demo.launcher import fairchem_command, run_streamed

    command = fairchem_command(
        mode,
        CONFIG,
        run_dir,
        ranks=2,
        gp_ranks=2,
        print_every=10,
        timestamp_id="oc20_mini",
        checkpoint=checkpoint,
        overrides=overrides,
    )
    run_streamed(command, cwd=REPO)


def train_and_predict(data: Path, work: Path, samples: dict, args: argparse.Namespace):
    """Train on the demo's schedule, then predict the held-out frames with the final model;
    returns (schedule, training seconds, scores)."""
    from ocp_graphpar.tools.demo.schedule import training_schedule
    from ocp_graphpar.tools.demo.stages import resolved_config
    from ocp_graphpar.tools.export import resolve_prediction_file
    from ocp_graphpar.tools.report import score_s2ef_predictions

    batch_size = int(resolved_config(REPO / CONFIG)["optim"]["batch_size"])
    schedule = training_schedule(samples["train"], batch_size, args.steps, args.evaluations)
    splits = [
        f"--dataset.train.src={data / 'train' / 's2ef' / 'train'}",
        f"--dataset.val.src={data / 'val' / 's2ef' / 'train'}",
    ]
    for folder in ("run", "predict"):  # an earlier run's checkpoints and logs
        shutil.rmtree(work / folder, ignore_errors=True)
    started = time.perf_counter()
    fairchem("train", work / "run", [*splits, *schedule.overrides()])
    seconds = time.perf_counter() - started
    checkpoint = work / "run" / "checkpoints" / "oc20_mini" / "checkpoint.pt"
    test = ["--dataset.test.src=" + str(data / "val" / "s2ef" / "train")]
    fairchem("predict", work / "predict", [*splits, *test], checkpoint=checkpoint)
    predictions = resolve_prediction_file("s2ef", work / "predict")
    return schedule, seconds, score_s2ef_predictions(predictions, data / "val" / "s2ef" / "train")


def write_report(curves, scores, schedule, seconds: float, samples: dict, split: str, args) -> dict:
    from ocp_graphpar.tools.report import plot_learning_curves

    report = {
        "model": f"GemNet-XL, demo widths ({CONFIG})",
        "launch": "fairchem --cpu --num-gpus 2 --gp-gpus 2",
        "frames": samples,
        "frame_stride": args.stride,
        "max_atoms": args.max_atoms,
        "split": split,
        "steps": schedule.total_steps,
        "epochs": schedule.epochs,
        "train_seconds": round(seconds, 1),
        "val_forces_mae_first": curves["val/forces_mae"][1][0].item(),
        "val_forces_mae_last": curves.last("val/forces_mae"),
        "final_model_held_out": scores.as_dict(),
        "zero_force_mae": scores.zero_force_mae,
        "reference_energy_mae": scores.reference_energy_mae,
        "final_over_zero_force": scores.forces_over_zero_force,
        "final_energy_over_reference": scores.energy_over_reference,
        "final_forces_cosine": scores.forces_cosine,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot_learning_curves(
        curves,
        args.out / "oc20_mini_training.png",
        title=f"GemNet-XL (demo widths), gp 2 on 2 CPU ranks, oc20_mini: {samples['train']} "
        f"training frames, {report['steps']} steps",
        zero_force_baseline=scores.zero_force_mae,
        reference_energy_baseline=scores.reference_energy_mae,
    )
    (args.out / "oc20_mini_training.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "oc20_mini_training.md").write_text(markdown(report, curves))
    return report


def markdown(report: dict, curves) -> str:
    steps, mae = curves["val/forces_mae"]
    rows = "\n".join(f"| {s} | {m:.4f} |" for s, m in zip(steps.tolist(), mae.tolist()))
    final = report["final_model_held_out"]
    return f"""# Real OC20 data: GemNet-XL (demo widths) at gp 2, the demo's recipe

Made by `scripts/oc20_mini_training.py`, trained with `{report['launch']}` for
{report['steps']} steps ({report['epochs']} epochs, {report['train_seconds']:.0f} s on this
machine's 2 CPU cores) with `{report['model'].split('(')[1].rstrip(')')}` (the `make demo`
recipe: normaliser fitted on the training frames, warm-up and step decay, EMA weights).

- Data: the OC20 DFT relaxations of `../shared/data/oc20_mini` with at most
  {report['max_atoms']} atoms, every {report['frame_stride']}th frame (first and last kept).
- Split {report['split']}: {report['frames']['train']} training frames,
  {report['frames']['val']} held-out frames.
- Energies referenced by per-element energies fitted on the training frames, so the
  per-element-reference baseline predicts 0.

The final model on all {final['frames']} held-out frames (free atoms), beside the baselines:

| | model | baseline | ratio |
|---|---|---|---|
| force MAE (eV/Å) vs predicting zero forces | {final['forces_mae']:.4f} | {final['zero_force_mae']:.4f} | **{final['forces_over_zero_force']:.2f}** |
| energy MAE (eV) vs per-element reference energy | {final['energy_mae']:.3f} | {final['reference_energy_mae']:.3f} | **{final['energy_over_reference']:.2f}** |
| force cosine | {final['forces_cosine']:.3f} | | |

![learning curves](oc20_mini_training.png)

| step | validation force MAE (eV/Å) |
|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "oc20_mini")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "oc20_mini")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--steps", type=int, default=700, help="optimizer steps, whole epochs")
    parser.add_argument("--evaluations", type=int, default=8, help="validations during training")
    parser.add_argument("--stride", type=int, default=8, help="keep every N-th frame")
    parser.add_argument(
        "--split",
        choices=["frames", "systems"],
        default="frames",
        help="validate on held-out frames of the training relaxations (default), or on held-out "
        "relaxations (20%% of the systems; needs far more training than a few CPU minutes)",
    )
    parser.add_argument("--hold-out-every", type=int, default=5, metavar="K")
    parser.add_argument(
        "--max-atoms",
        type=int,
        default=80,
        help="use the relaxations of at most this many atoms (15 of the 24), for more steps "
        "per CPU minute; 200 takes all",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"oc20_mini not found at {args.data}: pass --data DIR (a folder of *.traj)")

    from ocp_graphpar.tools.report import read_learning_curves

    data = args.work / "data"
    samples, split = build_dataset(args.data, data, args)
    schedule, seconds, scores = train_and_predict(data, args.work, samples, args)
    curves = read_learning_curves(args.work / "run")
    report = write_report(curves, scores, schedule, seconds, samples, split, args)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
