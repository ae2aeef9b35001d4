"""GemNet scale files: the legacy key names of files written before fairchem renamed them."""

from __future__ import annotations

import logging
import re

from fairchem.core.modules.scaling.compat import _load_scale_dict

# Scale files written before fairchem renamed the atom-update scale factors (e.g. the shipped
# GemNet-XL file) name them after their interaction block.
_LEGACY_ATOM_UPDATE = re.compile(r"^IntBlock_(\d+)_sum$")


def load_scale_dict(scale_file) -> dict | None:
    """Read a scale file (``.json``/``.pt`` path or dict), renaming legacy ``IntBlock_*_sum``
    keys to ``AtomUpdate_*_sum`` with a warning."""
    scales = _load_scale_dict(scale_file)
    if not scales:
        return scales
    renamed = {}
    for key in scales:
        match = _LEGACY_ATOM_UPDATE.match(key)
        if match and f"AtomUpdate_{match.group(1)}_sum" not in scales:
            renamed[key] = f"AtomUpdate_{match.group(1)}_sum"
    if renamed:
        logging.warning(
            "scale file uses legacy names %s; loading them as %s",
            sorted(renamed),
            [renamed[k] for k in sorted(renamed)],
        )
    return {renamed.get(key, key): value for key, value in scales.items()}
