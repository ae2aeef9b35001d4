"""Bytes through collectives per training step: GemNet-XL against upstream ``gp_gemnet_t``.

Both models get the same weights and batch, and one training step (forward, an energy + force
loss, backward) on every GP rank; :func:`count_wire_bytes` counts what each rank receives.
Upstream 1.10's ``gp_gemnet_t`` reads ``graph.distance_vec``, which fairchem's ``GraphData`` does
not have, so its forward fails; a one-line alias, applied only while measuring, lets it run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ocp_graphpar.tools.bench.wire import count_wire_bytes


@contextlib.contextmanager
def upstream_gp_alias() -> Iterator[None]:
    """Let upstream ``gp_gemnet_t`` run: ``GraphData.distance_vec`` -> ``edge_distance_vec``."""
    from fairchem.core.models.base import GraphData

    GraphData.distance_vec = property(lambda graph: graph.edge_distance_vec)
    try:
        yield
    finally:
        del GraphData.distance_vec


def training_step_bytes(model, batch) -> dict:
    """Run one training step of ``model`` on ``batch``; collective bytes by kind."""
    batch = batch.clone()
    with count_wire_bytes() as stats:
        out = model(batch)
        energy = out["energy"].reshape(-1)
        loss = (energy - batch.energy.to(energy.dtype)).abs().mean()
        loss = loss + 100 * (out["forces"] - batch.forces.to(energy.dtype)).norm(dim=-1).mean()
        loss.backward()
    return {"total": stats.total_bytes, "calls": stats.total_calls, "by_kind": stats.as_dict()}


def compare_on_rank(model_config: dict, batch, seed: int = 0, dtype=torch.float32) -> dict:
    """On one GP rank: the bytes of ours and of upstream ``gp_gemnet_t``, same weights."""
    from fairchem.core.models.gemnet_gp.gemnet import GraphParallelGemNetT

    from ocp_graphpar.models import GemNetXL

    torch.manual_seed(seed)
    ours = GemNetXL(**model_config).to(dtype)
    upstream = GraphParallelGemNetT(**model_config).to(dtype)
    upstream.load_state_dict(ours.state_dict(), strict=True)
    result = {"ours": training_step_bytes(ours, batch)}
    del ours
    with upstream_gp_alias():
        result["upstream"] = training_step_bytes(upstream, batch)
    return result
