"""Train the demo-width GemNet-XL at gp 2 on real OC20 DFT frames, and report.

Converts ``../shared/data/oc20_mini`` (24 relaxations) into S2EF LMDBs split by system, trains
``configs/s2ef/gemnet_xl_demo.yml`` through the unmodified ``fairchem`` CLI on 2 CPU ranks with
``--gp-gpus 2`` for a few minutes, then writes the learning curves (PNG), the validation force
MAE against the predict-zero-forces baseline, and a short Markdown table to ``docs/``::

    .venv/bin/python scripts/oc20_mini_training.py              # about 10 minutes on 2 cores
    .venv/bin/python scripts/oc20_mini_training.py --epochs 1 --stride 8   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
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


def train(data: Path, run_dir: Path, args: argparse.Namespace) -> float:
    """Train through the fairchem CLI (output streamed; Ctrl-C stops every rank)."""
    from ocp_graphpar.tools.demo.launcher import fairchem_command, run_streamed

    command = fairchem_command(
        "train",
        "configs/s2ef/gemnet_xl_demo.yml",
        run_dir,
        ranks=2,
        gp_ranks=2,
        print_every=10,
        overrides=[
            "--identifier=oc20_mini",
            f"--dataset.train.src={data / 'train' / 's2ef' / 'train'}",
            f"--dataset.val.src={data / 'val' / 's2ef' / 'train'}",
            f"--optim.max_epochs={args.epochs}",
            f"--optim.eval_every={args.eval_every}",
        ],
    )
    started = time.perf_counter()
    run_streamed(command, cwd=REPO)
    return time.perf_counter() - started


def write_report(curves, baseline: float, seconds: float, samples: dict, split: str, args) -> dict:
    from ocp_graphpar.tools.report import plot_learning_curves

    steps, _ = curves["train/loss"]
    report = {
        "model": "GemNet-XL, demo widths (configs/s2ef/gemnet_xl_demo.yml)",
        "launch": "fairchem --cpu --num-gpus 2 --gp-gpus 2",
        "frames": samples,
        "frame_stride": args.stride,
        "max_atoms": args.max_atoms,
        "split": split,
        "steps": int(steps.max()),
        "train_seconds": round(seconds, 1),
        "val_forces_mae_first": curves["val/forces_mae"][1][0].item(),
        "val_forces_mae_last": curves.last("val/forces_mae"),
        "val_forces_mae_best": curves.best("val/forces_mae"),
        "val_energy_mae_last": curves.last("val/energy_mae"),
        "zero_force_mae": baseline,
    }
    report["best_over_zero_baseline"] = report["val_forces_mae_best"] / baseline
    args.out.mkdir(parents=True, exist_ok=True)
    plot_learning_curves(
        curves,
        args.out / "oc20_mini_training.png",
        title=f"GemNet-XL (demo widths), gp 2 on 2 CPU ranks, oc20_mini: {samples['train']} "
        f"training frames, {report['steps']} steps",
        zero_force_baseline=baseline,
    )
    (args.out / "oc20_mini_training.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "oc20_mini_training.md").write_text(markdown(report, curves))
    return report


def markdown(report: dict, curves) -> str:
    steps, mae = curves["val/forces_mae"]
    rows = "\n".join(f"| {s} | {m:.4f} |" for s, m in zip(steps.tolist(), mae.tolist()))
    return f"""# Real OC20 data: GemNet-XL (demo widths) at gp 2

Made by `scripts/oc20_mini_training.py`, trained with `{report['launch']}` for
{report['steps']} steps ({report['train_seconds']:.0f} s on this machine's 2 CPU cores).

- Data: the OC20 DFT relaxations of `../shared/data/oc20_mini` with at most
  {report['max_atoms']} atoms, every {report['frame_stride']}th frame (first and last kept).
- Split {report['split']}: {report['frames']['train']} training frames,
  {report['frames']['val']} validation frames.
- Energies referenced by per-element energies fitted on the training frames.

| | eV/Å |
|---|---|
| validation force MAE, predicting zero forces | {report['zero_force_mae']:.4f} |
| validation force MAE, first evaluation | {report['val_forces_mae_first']:.4f} |
| validation force MAE, last evaluation | {report['val_forces_mae_last']:.4f} |
| validation force MAE, best | {report['val_forces_mae_best']:.4f} ({report['best_over_zero_baseline']:.0%} of the baseline) |

Validation energy MAE at the last evaluation: {report['val_energy_mae_last']:.3f} eV.

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
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--stride", type=int, default=8, help="keep every N-th frame")
    parser.add_argument("--eval-every", type=int, default=34, help="steps between evaluations")
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

    from ocp_graphpar.tools.report import read_learning_curves, zero_force_mae

    data = args.work / "data"
    samples, split = build_dataset(args.data, data, args)
    seconds = train(data, args.work / "run", args)
    curves = read_learning_curves(args.work / "run")
    baseline = zero_force_mae(data / "val" / "s2ef" / "train")
    report = write_report(curves, baseline, seconds, samples, split, args)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
