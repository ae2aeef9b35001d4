"""The demo recipe's floors, checked on full runs (a benchmark, not a test: about 16 minutes).

Runs ``ocp-graphpar demo`` twice with its defaults: on the embedded EMT set, and with ``--data``
on EMT trajectories of other systems (fcc(110) slabs, 800 K MD then relaxation, written by
``tests/helpers/emt_trajectories.py``). Reads each ``summary.json`` and writes
``docs/demo_recipe.{md,json}``: held-out force MAE against predicting zero forces, energy MAE
against the per-element reference energy, force cosine, beside the floors::

    .venv/bin/python scripts/demo_recipe_check.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

#: (name, force ratio floor, energy ratio floor)
FLOORS = {"embedded": (0.5, 1.0), "trajectories": (0.35, None)}


def run_demo(out: Path, data: Path | None) -> dict:
    command = [str(REPO / ".venv" / "bin" / "ocp-graphpar"), "demo", "--out", str(out), "--restart"]
    if data is not None:
        command += ["--data", str(data)]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    summary = json.loads((out / "summary.json").read_text())
    s2ef = summary["s2ef"]
    return {
        "train_frames": summary["data"]["train_frames"],
        "val_frames": summary["data"]["val_frames"],
        "train_systems": summary["data"]["train_systems"],
        "val_systems": summary["data"]["val_systems"],
        "steps": summary["training"]["total_steps"],
        "forces_mae": s2ef["final_model_all_val_frames"]["forces_mae"],
        "zero_force_mae": s2ef["zero_force_mae"],
        "final_over_zero_force": s2ef["final_over_zero_force"],
        "energy_mae": s2ef["final_model_all_val_frames"]["energy_mae"],
        "reference_energy_mae": s2ef["reference_energy_mae"],
        "final_energy_over_reference": s2ef["final_energy_over_reference"],
        "forces_cosine": s2ef["final_forces_cosine"],
        "demo_seconds": round(time.perf_counter() - started, 1),
    }


def markdown(results: dict) -> str:
    rows = []
    for name, r in results.items():
        force_floor, energy_floor = FLOORS[name]
        passed = r["final_over_zero_force"] <= force_floor and (
            energy_floor is None or r["final_energy_over_reference"] < energy_floor
        )
        rows.append(
            f"| {name} | {r['train_systems']} / {r['val_systems']} | {r['train_frames']} "
            f"| {r['steps']} | {r['forces_mae']:.4f} | {r['zero_force_mae']:.4f} "
            f"| **{r['final_over_zero_force']:.2f}** (<= {force_floor}) | {r['energy_mae']:.3f} "
            f"| {r['reference_energy_mae']:.3f} | **{r['final_energy_over_reference']:.2f}**"
            + (f" (< {energy_floor})" if energy_floor else "")
            + f" | {r['forces_cosine']:.3f} | {r['demo_seconds'] / 60:.1f} min "
            f"| {'yes' if passed else 'NO'} |"
        )
    return "\n".join(
        [
            "# The demo recipe on full runs",
            "",
            "Made by `scripts/demo_recipe_check.py`: `ocp-graphpar demo` with its defaults "
            "(GemNet-XL at demo widths, gp 2 on 2 CPU ranks), scored on every frame of the "
            "held-out systems (free atoms). *embedded*: the EMT demo set; *trajectories*: "
            "`--data` with 16 EMT trajectories of other systems (fcc(110), 800 K MD then "
            "relaxation). Energies are referenced per element on the training frames, so the "
            "reference baseline predicts 0.",
            "",
            "| data | systems train / held out | training frames | steps | force MAE (eV/Å) "
            "| zero forces | force ratio | energy MAE (eV) | per-element reference "
            "| energy ratio | force cosine | `make demo` time | floors met |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "demo_recipe")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    from helpers.emt_trajectories import write_trajectories

    trajectories = args.work / "trajectories"
    write_trajectories(trajectories, 16)
    results = {
        "embedded": run_demo(args.work / "embedded", None),
        "trajectories": run_demo(args.work / "trajectories_demo", trajectories),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_recipe.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "demo_recipe.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
