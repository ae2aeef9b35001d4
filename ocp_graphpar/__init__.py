"""ocp-graphpar: graph-parallel GemNet-XL and DimeNet++-XL for fairchem-core 1.x.

Importing the package registers its models in ``fairchem.core.common.registry`` under short
names (fairchem's ``register_model`` decorator, applied where each model is defined); configs
can also name them by import path (``ocp_graphpar.models.GemNetXL``), which the unmodified
``fairchem`` CLI resolves by importing this package. Importing it also installs the fixes for
fairchem-core 1.10 defects on the training path (see ``ocp_graphpar.fairchem_fixes``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from ocp_graphpar import fairchem_fixes, models  # noqa: F401  (registers the models)

fairchem_fixes.apply()
