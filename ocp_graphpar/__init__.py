"""ocp-graphpar: graph-parallel GemNet-XL and DimeNet++-XL for fairchem-core 1.x.

Importing the package registers its models, its dataset format and its trainer in
``fairchem.core.common.registry`` under short names (``gemnet_xl``, ``dimenetpp_xl``,
``oc20_lmdb``, ``ocp_graphpar``; fairchem's decorators, applied where each is defined); configs
name them by import path (``ocp_graphpar.models.GemNetXL``), which the unmodified ``fairchem``
CLI resolves by importing the module. Importing it also installs the fixes for
fairchem-core 1.10 defects on the training path (see ``ocp_graphpar.fairchem_fixes``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from ocp_graphpar import datasets, fairchem_fixes, models, trainers  # noqa: F401  (registers)

fairchem_fixes.apply()
