"""Process groups kept alive until the process exits.

At the end of a run fairchem's ``new_trainer_context`` calls ``distutils.cleanup``, which
destroys the process groups while the trainer's ``DistributedDataParallel`` still holds the
default group; the last reference then goes whenever DDP is garbage-collected.
``ProcessGroupGloo``'s destructor joins its worker threads while holding the GIL, and a worker
that still needs the GIL to release a finished collective's tensor never ends: the rank hangs
after its run is done (seen once in about 15 ``fairchem`` launches). Holding one more reference
to each group the trainer uses, in a module-level list, moves every destructor to interpreter
exit, after the run.
"""

from __future__ import annotations

import torch.distributed as dist
from fairchem.core.common import gp_utils

_RETAINED: list[dist.ProcessGroup] = []


def retain_process_groups() -> None:
    """Keep the default group and fairchem's graph- and data-parallel groups (when set up)
    referenced until the process exits."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    groups = [dist.group.WORLD]
    if gp_utils.initialized():
        groups += [gp_utils.get_gp_group(), gp_utils.get_dp_group()]
    for group in groups:
        # Identity, not equality: a group recreated later (another GP size) is another object.
        if group is not None and not any(group is kept for kept in _RETAINED):
            _RETAINED.append(group)


def retained_process_groups() -> list[dist.ProcessGroup]:
    """Every group kept so far (a copy)."""
    return list(_RETAINED)
