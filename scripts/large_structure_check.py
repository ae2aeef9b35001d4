"""GraphParallelCalculator on a ~1,000-atom adsorbate + slab structure, against fairchem's
``OCPCalculator`` on the same checkpoint (a check, not a test: about 10 minutes on 2 cores).

An upstream ``gemnet_t`` checkpoint at the demo GemNet-XL's widths (random weights, non-trivial
scale factors and normalisers) runs in ``OCPCalculator`` (upstream's model, one process) and in
``GraphParallelCalculator(gp_size=2, cpu=True)`` (its graph-parallel twin over two gloo ranks).
The script compares energy and forces, then runs an ASE BFGS relaxation through the
graph-parallel calculator, and writes ``docs/large_structure_check.{md,json}``::

    .venv/bin/python scripts/large_structure_check.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from ase.optimize import BFGS
from fairchem.core.common.relaxation.ase_utils import OCPCalculator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from calculator_cases import slab, write_checkpoint  # noqa: E402

from ocp_graphpar.calculator import GraphParallelCalculator  # noqa: E402

#: The demo GemNet-XL's options that upstream ``gemnet_t`` also takes.
_GRAPH_PARALLEL_ONLY = {"activation_checkpointing", "partition_weights", "auto_fit_scale_factors"}
_RUN_OPTIONS = {"name", "otf_graph", "regress_forces"}


def demo_widths() -> dict:
    model = yaml.safe_load((REPO / "configs/s2ef/gemnet_xl_demo.yml").read_text())["model"]
    return {k: v for k, v in model.items() if k not in _GRAPH_PARALLEL_ONLY | _RUN_OPTIONS}


def timed(calculator, atoms) -> tuple[float, np.ndarray, float]:
    atoms = atoms.copy()
    atoms.calc = calculator
    started = time.perf_counter()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces(apply_constraint=False)
    return energy, forces, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(12, 12, 7), help="slab repeats")
    parser.add_argument("--bfgs-steps", type=int, default=15)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()

    atoms = slab(tuple(args.size))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(
            Path(folder) / "gemnet_t.pt", "gemnet", upstream=True, widths=demo_widths()
        )
        upstream = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
        energy_ref, forces_ref, upstream_s = timed(upstream, atoms)
        timed(upstream, atoms)  # the first call pays for start-up work; time a second
        _, _, upstream_s = timed(upstream, atoms)
        del upstream

        began = time.perf_counter()
        with GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=2, cpu=True) as gp:
            startup_s = time.perf_counter() - began
            energy, forces, _ = timed(gp, atoms)
            _, _, gp_s = timed(gp, atoms)
            relaxed = atoms.copy()
            relaxed.calc = gp
            fmax_start = float(np.linalg.norm(relaxed.get_forces(), axis=1).max())
            optimizer = BFGS(relaxed, logfile="-")
            began = time.perf_counter()
            converged = optimizer.run(fmax=args.fmax, steps=args.bfgs_steps)
            relax_s = time.perf_counter() - began
            fmax_end = float(np.linalg.norm(relaxed.get_forces(), axis=1).max())
            searches = gp.neighbour_searches()
        fixed = atoms.constraints[0].get_indices()
        fixed_moved = float(np.abs(relaxed.positions[fixed] - atoms.positions[fixed]).max())

    scale = float(np.abs(forces_ref).max())
    result = {
        "atoms": len(atoms),
        "formula": atoms.get_chemical_formula(),
        "fixed_atoms": len(fixed),
        "model": "upstream gemnet_t checkpoint at the demo GemNet-XL widths (random weights)",
        "energy_upstream_eV": energy_ref,
        "energy_gp2_eV": energy,
        "energy_relative_difference": abs(energy - energy_ref) / abs(energy_ref),
        "largest_force_component_eV_per_A": scale,
        "forces_max_difference_over_largest": float(np.abs(forces - forces_ref).max() / scale),
        "upstream_seconds_per_call": upstream_s,
        "gp2_seconds_per_call": gp_s,
        "gp2_startup_seconds": startup_s,
        "bfgs_steps": optimizer.nsteps,
        "bfgs_converged": bool(converged),
        "bfgs_fmax_start": fmax_start,
        "bfgs_fmax_end": fmax_end,
        "bfgs_seconds": relax_s,
        "neighbour_searches": searches,
        "fixed_atoms_largest_move_A": fixed_moved,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large_structure_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "large_structure_check.md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    return f"""# GraphParallelCalculator on a {r["atoms"]:,}-atom adsorbate + slab

Written by `scripts/large_structure_check.py` (2 CPU cores). Structure: {r["formula"]}, a rattled
Cu(111) slab with CO on top, {r["fixed_atoms"]} atoms fixed (FixAtoms). Model: {r["model"]}.
Reference: fairchem's `OCPCalculator` on the same checkpoint (upstream's model, one process).

| | `OCPCalculator` | `GraphParallelCalculator(gp_size=2, cpu=True)` |
|---|---:|---:|
| energy (eV) | {r["energy_upstream_eV"]:.6f} | {r["energy_gp2_eV"]:.6f} |
| energy, relative difference | | {r["energy_relative_difference"]:.2e} (at most 1e-4) |
| forces, largest difference / largest component ({r["largest_force_component_eV_per_A"]:.3f} eV/A) | | {r["forces_max_difference_over_largest"]:.2e} (at most 1e-3) |
| seconds per call (after the first) | {r["upstream_seconds_per_call"]:.2f} | {r["gp2_seconds_per_call"]:.2f} |

Both run in float32; the graph-parallel sums run in another order, hence the rounding-level
differences. The calculator started its two workers in {r["gp2_startup_seconds"]:.1f} s.

ASE BFGS through the graph-parallel calculator: {r["bfgs_steps"]} steps in {r["bfgs_seconds"]:.1f} s,
largest free-atom force {r["bfgs_fmax_start"]:.3f} -> {r["bfgs_fmax_end"]:.3f} eV/A
({"converged" if r["bfgs_converged"] else "not converged"} at fmax 0.05; the weights are random, so
the landscape is rough), {r["neighbour_searches"]} neighbour searches in all (a 1 A skin), fixed
atoms moved at most {r["fixed_atoms_largest_move_A"]:.1e} A.
"""


if __name__ == "__main__":
    main()
