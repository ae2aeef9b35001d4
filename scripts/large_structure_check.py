"""GraphParallelCalculator on a ~1,000-atom adsorbate + slab structure, against fairchem's
``OCPCalculator`` on the same checkpoint, and ``ocp-graphpar md`` on a 500-atom slab interrupted
and resumed (a check, not a test: about 20 minutes on 2 cores).

An upstream ``gemnet_t`` checkpoint at the demo GemNet-XL's widths (random weights, non-trivial
scale factors and normalisers) runs in ``OCPCalculator`` (upstream's model, one process) and in
``GraphParallelCalculator(gp_size=2, cpu=True)`` (its graph-parallel twin over two gloo ranks).
The script compares energy and forces, then runs an ASE BFGS relaxation through the
graph-parallel calculator. Then ``ocp-graphpar md --gp 2 --cpu`` runs 100 steps of a 502-atom
slab once straight through and once stopped by Ctrl-C (SIGINT), resumed, killed (SIGKILL) and
resumed again. It writes ``docs/large_structure_check.{md,json}``::

    .venv/bin/python scripts/large_structure_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
import yaml
from ase.optimize import BFGS
from fairchem.core.common.relaxation.ase_utils import OCPCalculator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.calculator_cases import slab, write_checkpoint  # noqa: E402

from ocp_graphpar.calculator import GraphParallelCalculator  # noqa: E402
from ocp_graphpar.tools.simulate.trajectory import RECORD_KEY  # noqa: E402

#: The demo GemNet-XL's options that upstream ``gemnet_t`` also takes.
_GRAPH_PARALLEL_ONLY = {"activation_checkpointing", "partition_weights", "auto_fit_scale_factors"}
_RUN_OPTIONS = {"name", "otf_graph", "regress_forces"}


def demo_widths() -> dict:
    """The demo GemNet-XL's architecture, with energy-conserving forces (-dE/dpos) so that
    molecular dynamics on random weights is dynamics on one (random) potential surface."""
    model = yaml.safe_load((REPO / "configs/s2ef/gemnet_xl_demo.yml").read_text())["model"]
    widths = {k: v for k, v in model.items() if k not in _GRAPH_PARALLEL_ONLY | _RUN_OPTIONS}
    return {**widths, "direct_forces": False}


def calibrated(checkpoint: Path, atoms, *, largest_force: float) -> None:
    """Rescale ``checkpoint``'s energy and force normalisers to one scale (forces stay -dE/dpos) so
    that ``atoms``' largest force is ``largest_force`` eV/A, the size of DFT forces, rather
    than what random weights happen to give."""
    calculator = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    _, forces, _ = timed(calculator, atoms)
    state = torch.load(checkpoint, weights_only=False)
    # One scale for both: the model's forces are -dE/dpos of its normalised energy.
    rmsd = state["normalizers"]["forces"]["rmsd"] * largest_force / float(np.abs(forces).max())
    for target in ("energy", "forces"):
        state["normalizers"][target]["rmsd"] = rmsd
    torch.save(state, checkpoint)


def timed(calculator, atoms) -> tuple[float, np.ndarray, float]:
    atoms = atoms.copy()
    calculator.reset()  # else a second call on the same atoms returns the stored results
    atoms.calc = calculator
    started = time.perf_counter()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces(apply_constraint=False)
    return energy, forces, time.perf_counter() - started


def md_command(checkpoint: Path, structure: Path, out: Path, steps: int) -> list[str]:
    return [
        *(sys.executable, "-m", "ocp_graphpar.cli", "md"),
        *("--checkpoint", str(checkpoint), "--structure", str(structure), "--out", str(out)),
        *("--gp", "2", "--cpu", "--steps", str(steps), "--interval", "5"),
        *("--temperature", "300", "--timestep", "1"),
    ]


def last_step(out: Path) -> int:
    try:
        return ase.io.read(out, index=-1).info[RECORD_KEY]["step"]
    except (FileNotFoundError, StopIteration):
        return -1


def stopped_at(command: list[str], out: Path, *, step: int, how: signal.Signals) -> dict:
    """Run ``command`` until ``out`` holds ``step``, then send ``how`` to its process group (as
    Ctrl-C in a terminal reaches every process of the job) and wait for it to end."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # A job started in the background inherits SIGINT ignored; a terminal's job does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while last_step(out) < step:
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before step {step}:\n{process.stdout.read()}")
        time.sleep(0.1)
    os.killpg(process.pid, how)
    output = process.communicate(timeout=120)[0]
    return {
        "signal": how.name,
        "exit_status": process.returncode,
        "last_step": last_step(out),
        "tail": output.strip().splitlines()[-2:],
    }


def md_resumption(checkpoint: Path, folder: Path, *, steps: int, size: tuple[int, ...]) -> dict:
    """``ocp-graphpar md`` straight through, and stopped twice and resumed."""
    structure = folder / "md_slab.traj"
    atoms = slab(size)
    ase.io.write(structure, atoms)
    whole, parts = folder / "whole.traj", folder / "parts.traj"
    began = time.perf_counter()
    straight = subprocess.run(
        md_command(checkpoint, structure, whole, steps),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    straight_s = time.perf_counter() - began
    command = md_command(checkpoint, structure, parts, steps)
    stops = [
        stopped_at(command, parts, step=steps // 3, how=signal.SIGINT),
        stopped_at(command, parts, step=2 * steps // 3, how=signal.SIGKILL),
    ]
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    end, reference = ase.io.read(parts, index=-1), ase.io.read(whole, index=-1)
    return {
        "md_atoms": len(atoms),
        "md_steps": steps,
        "md_straight_seconds": straight_s,
        "md_straight_summary": straight.stdout.strip().splitlines()[-3:],
        "md_progress_bar": straight.stderr.strip().splitlines()[-1].split("\r")[-1],
        "md_stops": stops,
        "md_resumed_summary": resumed.stdout.strip().splitlines(),
        "md_frames_steps": [f.info[RECORD_KEY]["step"] for f in ase.io.read(parts, index=":")],
        "md_positions_max_difference_A": float(np.abs(end.positions - reference.positions).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(12, 12, 7), help="slab repeats")
    parser.add_argument("--bfgs-steps", type=int, default=15)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--md-steps", type=int, default=100)
    parser.add_argument("--md-size", type=int, nargs=3, default=(10, 10, 5), help="MD slab")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()

    atoms = slab(tuple(args.size))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(
            Path(folder) / "gemnet_t.pt", "gemnet", upstream=True, widths=demo_widths()
        )
        calibrated(checkpoint, atoms, largest_force=2.0)
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
        md = md_resumption(checkpoint, Path(folder), steps=args.md_steps, size=tuple(args.md_size))

    scale = float(np.abs(forces_ref).max())
    result = {
        "atoms": len(atoms),
        "formula": atoms.get_chemical_formula(),
        "fixed_atoms": len(fixed),
        "model": "upstream gemnet_t checkpoint at the demo GemNet-XL widths, -dE/dpos forces (random weights, normalisers scaled to a largest force of 2 eV/A)",
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
        **md,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large_structure_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "large_structure_check.md").write_text(report(result))
    print(report(result))


def _steps(steps: list[int]) -> str:
    if len(steps) <= 6:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:4])) + ", ..., " + ", ".join(map(str, steps[-2:]))


def report(r: dict) -> str:
    stops = "\n".join(
        f"| {stop['signal']} | once step {stop['last_step']} was written | {stop['exit_status']} "
        f"| {stop['last_step']} |"
        for stop in r["md_stops"]
    )
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
differences. The calculator started its two workers in {r["gp2_startup_seconds"]:.1f} s. The
times are not like for like: at unchanged positions the graph-parallel calculator selects the
graph from its kept neighbour list, while `OCPCalculator` searches for neighbours at every call.

ASE BFGS through the graph-parallel calculator: {r["bfgs_steps"]} steps in {r["bfgs_seconds"]:.1f} s,
largest free-atom force {r["bfgs_fmax_start"]:.3f} -> {r["bfgs_fmax_end"]:.3f} eV/A
({"converged" if r["bfgs_converged"] else "not converged"} at fmax 0.05 in this many steps; random
weights), {r["neighbour_searches"]} neighbour searches in all (a 1 A skin), fixed
atoms moved at most {r["fixed_atoms_largest_move_A"]:.1e} A.

## `ocp-graphpar md` on a {r["md_atoms"]}-atom slab, interrupted and resumed

`ocp-graphpar md --gp 2 --cpu --steps {r["md_steps"]} --interval 5 --temperature 300 --timestep 1`
(Langevin NVT) on the same checkpoint, straight through in {r["md_straight_seconds"]:.0f} s:

```
{r["md_progress_bar"]}
{chr(10).join(r["md_straight_summary"])}
```

The same command in another file, stopped and rerun:

| stop | when | exit status | trajectory ends at step |
|---|---|---:|---:|
{stops}

The third run resumed and finished (frames at steps {_steps(r["md_frames_steps"])}):

```
{chr(10).join(r["md_resumed_summary"])}
```

Final positions differ from the uninterrupted run's by at most
{r["md_positions_max_difference_A"]:.1e} A: the resumed runs draw the Langevin random forces the
uninterrupted run drew, from the generator state saved in each frame; what can differ is the order
of float32 sums across ranks, the GP partition being drawn at the positions a run starts from.
"""


if __name__ == "__main__":
    main()
