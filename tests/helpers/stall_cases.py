"""What tests/runtime/test_stalls.py and scripts/stall_table.py count: one training step, on held-out
OC20 systems, under :class:`~ocp_graphpar.measure.stalls.StallCounter`."""

from __future__ import annotations

from helpers.oc20 import fairchem_batch, oc20_atoms, oc20_systems
from ocp_graphpar.measure.stalls import StallCounter
from ocp_graphpar.measure.steps import training_step

# GemNet-XL's blocks and layers; stall and operator counts do not depend on the widths.
GEMNET_XL_LAYERS = dict(num_blocks=6, num_before_skip=1, num_after_skip=2, num_atom=3)


def held_out_batch(num_systems: int):
    return fairchem_batch([oc20_atoms(s) for s in oc20_systems(num_systems, max_atoms=90)])


def count_step(model, batch) -> StallCounter:
    """The second training step's counts (lazy initialisation happens in the first)."""
    model.train()
    training_step(model, batch)
    with StallCounter() as counter:
        training_step(model, batch)
    return counter
