"""GraphParallelCalculator against fairchem's OCPCalculator on the same checkpoint: P = 1, 2, 3
for the three models, EMA weights, neighbour-list reuse in MD, BFGS under FixAtoms, a killed
worker and the structures it refuses."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from fairchem.core.common.relaxation.ase_utils import OCPCalculator
from helpers.calculator_cases import slab, with_ema_as_weights, write_checkpoint

from ocp_graphpar.calculator import GraphParallelCalculator, WorkerError
from ocp_graphpar.errors import UserFacingError


def reference(checkpoint, atoms: Atoms) -> tuple[float, np.ndarray]:
    """fairchem's OCPCalculator, one process."""
    calc = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    logging.getLogger().setLevel(logging.WARNING)  # OCPCalculator sets INFO
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)


def evaluate(calc, atoms: Atoms) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)


def assert_close(actual, expected, *, energy_rtol: float, force_tol: float) -> None:
    """Energy relative to its size, forces relative to the largest component (float32 runs)."""
    (energy, forces), (energy_ref, forces_ref) = actual, expected
    assert abs(energy - energy_ref) <= energy_rtol * abs(energy_ref), (energy, energy_ref)
    error = np.abs(forces - forces_ref).max() / np.abs(forces_ref).max()
    assert error <= force_tol, error


@pytest.fixture(scope="module")
def structure() -> Atoms:
    return slab((7, 7, 6))  # 296 atoms


@pytest.mark.parametrize("family", ["gemnet", "dimenet", "painn"])
def test_equals_ocp_calculator_at_gp_1_2_3(family, structure, tmp_path):
    """An upstream checkpoint (gemnet_t, dimenetplusplus, painn) in its graph-parallel twin."""
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", family, upstream=True)
    expected = reference(checkpoint, structure)
    for gp_size in (1, 2, 3):
        with GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=gp_size, cpu=True) as calc:
            assert_close(evaluate(calc, structure), expected, energy_rtol=1e-5, force_tol=1e-4)
            assert calc.get_property("free_energy") == calc.get_property("energy")


def test_reads_ema_weights_where_the_checkpoint_holds_them(structure, tmp_path):
    raw = write_checkpoint(tmp_path / "checkpoint.pt", "painn", ema=True)
    best = with_ema_as_weights(raw, tmp_path / "best_checkpoint.pt")
    with GraphParallelCalculator(checkpoint_path=raw, gp_size=2, cpu=True) as calc:
        assert calc.model.uses_ema
        averaged = evaluate(calc, structure)
    with GraphParallelCalculator(checkpoint_path=raw, gp_size=2, cpu=True, use_ema=False) as calc:
        assert not calc.model.uses_ema
        weights = evaluate(calc, structure)
    assert_close(averaged, reference(best, structure), energy_rtol=1e-5, force_tol=1e-4)
    assert_close(weights, reference(raw, structure), energy_rtol=1e-5, force_tol=1e-4)
    assert abs(averaged[0] - weights[0]) > 1e-3 * abs(weights[0])  # the two differ


def test_config_and_model_overrides(structure, tmp_path):
    """``config_yml`` (a dict here) and ``model_overrides`` as OCPCalculator's config takes them."""
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", "gemnet")
    import torch

    config = torch.load(checkpoint, weights_only=False)["config"]
    config["model"]["max_neighbors"] = 12
    expected = reference_with_config(checkpoint, config, structure)
    with GraphParallelCalculator(
        checkpoint_path=checkpoint, gp_size=2, cpu=True, model_overrides={"max_neighbors": 12}
    ) as calc:
        assert calc.model.max_neighbors == 12
        assert_close(evaluate(calc, structure), expected, energy_rtol=1e-5, force_tol=1e-4)
    with GraphParallelCalculator(
        checkpoint_path=checkpoint, gp_size=2, cpu=True, config_yml=config
    ) as calc:
        assert calc.model.max_neighbors == 12


def reference_with_config(checkpoint, config: dict, atoms: Atoms) -> tuple[float, np.ndarray]:
    calc = OCPCalculator(
        config_yml={**config, "dataset": [config["dataset"]]},
        checkpoint_path=str(checkpoint),
        cpu=True,
        seed=0,
    )
    logging.getLogger().setLevel(logging.WARNING)
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)


def run_md(calc, start: Atoms, steps: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """NVE steps of ``start`` under ``calc``: positions and forces at every step."""
    atoms = start.copy()
    atoms.calc = calc
    frames: tuple[list, list] = ([], [])

    def record() -> None:
        frames[0].append(atoms.positions.copy())
        frames[1].append(atoms.get_forces().copy())

    dynamics = VelocityVerlet(atoms, timestep=2 * units.fs)
    dynamics.attach(record)
    dynamics.run(steps)
    return frames


def test_md_with_a_kept_neighbour_list_equals_searching_every_step(tmp_path):
    """20 steps of NVE at 1000 K with the skin list: at every step the forces equal a fresh
    search's on the same positions, the trajectory equals one searching every step, and the
    list is searched a few times rather than 20."""
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", "gemnet")
    start = slab((5, 5, 4))
    start.set_constraint()
    MaxwellBoltzmannDistribution(start, temperature_K=1000, rng=np.random.default_rng(0))
    with GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=2, cpu=True) as calc:
        positions, kept_forces = run_md(calc, start, steps=20)
        searches = calc.neighbour_searches()
    with GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=2, cpu=True, skin=0.0) as calc:
        fresh_forces = []
        for step_positions in positions:
            atoms = start.copy()
            atoms.positions = step_positions
            fresh_forces.append(evaluate(calc, atoms)[1])
        fresh_positions, _ = run_md(calc, start, steps=20)
        assert calc.neighbour_searches() == 0  # no kept list: the model searched every call
    assert len(positions) == 21
    # Both graphs hold the same edges; the two runs split the atoms differently over the ranks
    # (owners kept from the wider list), so float32 sums round differently: 1e-5 of the
    # largest force, where a missing or extra edge changes forces by a good part of it.
    scale = np.abs(np.array(fresh_forces)).max()
    assert np.abs(np.array(kept_forces) - np.array(fresh_forces)).max() <= 2e-5 * scale
    assert np.abs(positions[-1] - fresh_positions[-1]).max() <= 1e-3
    assert 1 <= searches < 10  # searched again only after atoms moved half the skin


def test_bfgs_under_fix_atoms(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", "painn")
    atoms = slab((4, 4, 4), fixed_layers=2)
    fixed = atoms.constraints[0].get_indices()
    before = atoms.positions.copy()
    with GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=2, cpu=True) as calc:
        atoms.calc = calc
        first = atoms.get_potential_energy()
        optimizer = BFGS(atoms, logfile=None)
        optimizer.run(fmax=0.05, steps=8)
        assert atoms.get_potential_energy() < first
        assert np.abs(atoms.get_forces()[fixed]).max() == 0.0  # ASE's view under FixAtoms
    assert np.array_equal(atoms.positions[fixed], before[fixed])
    assert np.abs(atoms.positions - before).max() > 1e-3


def test_a_killed_worker_gives_a_clear_error_and_nothing_hangs(structure, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", "painn")
    calc = GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=2, cpu=True)
    evaluate(calc, structure)
    os.kill(calc.worker_pids[1], signal.SIGKILL)
    moved = structure.copy()
    moved.positions[0, 0] += 0.1
    errors: list[BaseException] = []

    def call() -> None:
        try:
            evaluate(calc, moved)
        except BaseException as error:  # handed to the test's thread
            errors.append(error)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=120)
    assert not caller.is_alive(), "the call hung after a worker was killed"
    assert len(errors) == 1 and isinstance(errors[0], WorkerError)
    assert "GP rank 1" in str(errors[0]) and "signal 9" in str(errors[0])
    with pytest.raises(WorkerError, match="closed"):
        evaluate(calc, structure)
    calc.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", "gemnet")
    with GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=2, cpu=True) as calc:
        yield calc


def test_refuses_a_degenerate_cell_under_pbc(running):
    atoms = slab((2, 2, 2))
    atoms.cell[2] = 0.0
    with pytest.raises(UserFacingError, match="degenerate.*atoms.center"):
        evaluate(running, atoms)
    molecule = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]], pbc=False)
    energy, _ = evaluate(running, molecule)  # no cell is fine without PBC
    assert np.isfinite(energy)


def test_refuses_an_element_the_model_does_not_know(running):
    atoms = slab((2, 2, 2))
    atoms.numbers[0] = 100  # fermium; GemNet-T's embedding stops at bismuth (83)
    with pytest.raises(UserFacingError, match=r"\[100\].*Z = 1 \.\. 83"):
        evaluate(running, atoms)


def test_refuses_more_ranks_than_atoms_and_nan_positions(running):
    with pytest.raises(UserFacingError, match="gp_size=2 is larger than the structure's 1 atoms"):
        evaluate(running, Atoms("Cu", cell=[5, 5, 5], pbc=True))
    atoms = slab((2, 2, 2))
    atoms.positions[3] = np.nan
    with pytest.raises(UserFacingError, match=r"atoms \[3\] are not finite"):
        evaluate(running, atoms)
    energy, _ = evaluate(running, slab((2, 2, 2)))  # the workers are still serving
    assert np.isfinite(energy)


def test_ctrl_c_reaching_the_workers_leaves_them_serving(running):
    # A terminal's Ctrl-C signals every process of the job: the caller decides what it means.
    for pid in running.worker_pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(1.0)
    energy, _ = evaluate(running, slab((2, 2, 2)))
    assert np.isfinite(energy)


def test_refuses_bad_settings_before_starting_workers(tmp_path):
    with pytest.raises(UserFacingError, match="does not exist"):
        GraphParallelCalculator(checkpoint_path=tmp_path / "missing.pt", cpu=True)
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", "painn")
    with pytest.raises(UserFacingError, match="gp_size must be at least 1"):
        GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=0, cpu=True)
    with pytest.raises(UserFacingError, match="not one of ocp-graphpar's graph-parallel models"):
        GraphParallelCalculator(
            checkpoint_path=checkpoint, cpu=True, model_overrides={"name": "schnet"}
        )
    import torch

    if torch.cuda.device_count() < 64:
        with pytest.raises(UserFacingError, match="needs 64 GPUs"):
            GraphParallelCalculator(checkpoint_path=checkpoint, gp_size=64)
