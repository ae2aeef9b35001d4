"""ocp-graphpar: graph-parallel GemNet-XL, DimeNet++-XL and PaiNN-XL for fairchem-core 1.x.

Importing the package registers its models, its dataset format and its trainer in
``fairchem.core.common.registry`` under short names (``gemnet_xl``, ``dimenetpp_xl``,
``painn_xl``, ``oc20_lmdb``, ``ocp_graphpar``; fairchem's decorators, applied where each is defined); configs
name them by import path (``ocp_graphpar.models.GemNetXL``), which the unmodified ``fairchem``
CLI resolves by importing the module. Importing it changes nothing else of fairchem or torch
(tested): the fixes for fairchem-core 1.10 defects on the training path are methods of the
trainer the configs select, ``ocp_graphpar.trainers.GraphParallelTrainer``, and the hooks into
the ``fairchem`` CLI are installed by its start-up hook only (``ocp_graphpar.launch``); see
``docs/fairchem_fixes.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ocp_graphpar import datasets, models, trainers  # noqa: F401  (registers)
