"""Read GemNet-T's widths off a state dict, to explain a checkpoint that does not fit a config."""

from __future__ import annotations

import re

from torch import nn

from ocp_graphpar.errors import UserFacingError

# (constructor argument, state-dict key, dimension of that tensor holding the width)
_WIDTHS = (
    ("emb_size_atom", "atom_emb.embeddings.weight", 1),
    ("emb_size_edge", "edge_emb.dense.linear.weight", 0),
    ("emb_size_trip", "int_blocks.0.trip_interaction.down_projection.linear.weight", 0),
    ("emb_size_bil_trip", "int_blocks.0.trip_interaction.up_projection_ca.linear.weight", 1),
    ("emb_size_rbf", "mlp_rbf3.linear.weight", 0),
    ("emb_size_cbf", "mlp_cbf3.weight", 2),
    ("num_radial", "mlp_rbf3.linear.weight", 1),
    ("num_spherical", "mlp_cbf3.weight", 0),
)
_BLOCK = re.compile(r"^int_blocks\.(\d+)\.")


def widths(state_dict, prefix: str = "") -> dict[str, int]:
    """GemNet-T hyperparameters implied by a state dict (those it determines)."""
    found = {}
    for name, key, dim in _WIDTHS:
        tensor = state_dict.get(prefix + key)
        if tensor is not None and tensor.dim() > dim:
            found[name] = int(tensor.shape[dim])
    blocks = {
        int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k[len(prefix) :])) is not None
    }
    if blocks:
        found["num_blocks"] = max(blocks) + 1
    return found


def check_widths_on_load(model: nn.Module) -> None:
    """Make ``model.load_state_dict`` name every width a checkpoint disagrees on, and the fix."""

    def hook(module, state_dict, prefix, *_):
        theirs, ours = widths(state_dict, prefix), widths(module.state_dict())
        differ = {k: (theirs[k], ours[k]) for k in theirs if k in ours and theirs[k] != ours[k]}
        if differ:
            listed = ", ".join(
                f"{k} is {a} in the checkpoint but {b} in the config"
                for k, (a, b) in differ.items()
            )
            raise UserFacingError(
                f"the checkpoint does not fit the model config: {listed}. Set these in the "
                "config's model section to the checkpoint's values (weights do not depend on "
                "the GP size, so only the widths must match)."
            )

    model.register_load_state_dict_pre_hook(hook)
