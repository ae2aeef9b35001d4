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


def dimenet_exchanges_on_rank(model_config: dict, batch, dtype=torch.float32) -> dict:
    """On one GP rank: DimeNet++-XL's bytes per training step with the halo of down-projected
    input edges (ours) and with an all-gather of the edge features (the simple design)."""
    from ocp_graphpar.models import DimeNetPPXL

    result = {}
    for exchange in ("halo", "all_gather"):
        torch.manual_seed(0)
        model = DimeNetPPXL(**model_config, input_exchange=exchange).to(dtype)
        result[exchange] = training_step_bytes(model, batch)
        del model
    return {"ours": result["halo"], "upstream": result["all_gather"]}


def compare_in_world(model_config: dict, batch, size: int, dimenet: bool = False) -> list[dict]:
    """The comparison on ``size`` spawned gloo ranks; one result per rank."""
    from ocp_graphpar.parallel.testing import run_ranks

    measure = dimenet_exchanges_on_rank if dimenet else compare_on_rank
    return run_ranks(measure, size, model_config, batch, timeout_s=3600.0)


def _main() -> None:
    import argparse
    import json
    from pathlib import Path

    from ase.io import read
    from fairchem.core.common.utils import load_config
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/s2ef/gemnet_xl.yml")
    parser.add_argument("--traj", nargs="+", required=True, help="one structure per file (frame 0)")
    parser.add_argument("--gp", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model_config = dict(load_config(args.config)[0]["model"])
    dimenet = model_config.pop("name").endswith("DimeNetPPXL")
    for key in ("activation_checkpointing", "partition_weights", "detach_angles", "input_exchange"):
        model_config.pop(key, None)
    a2g = AtomsToGraphs(max_neigh=50, radius=6, r_energy=True, r_forces=True, r_edges=True)
    batch = data_list_collater([a2g.convert(read(p, 0)) for p in args.traj], otf_graph=False)
    results = compare_in_world(model_config, batch, args.gp, dimenet)
    summary = {
        "config": args.config,
        "systems": [str(p) for p in args.traj],
        "atoms": int(batch.natoms.sum()),
        "edges": int(batch.edge_index.shape[1]),
        "gp": args.gp,
        "compared": "halo vs all-gather of edge features" if dimenet else "GemNetXL vs gp_gemnet_t",
        "per_rank": results,
        "ours_bytes_per_rank_max": max(r["ours"]["total"] for r in results),
        "upstream_bytes_per_rank_max": max(r["upstream"]["total"] for r in results),
        "ours_bytes_total": sum(r["ours"]["total"] for r in results),
        "upstream_bytes_total": sum(r["upstream"]["total"] for r in results),
    }
    summary["ratio"] = summary["ours_bytes_total"] / summary["upstream_bytes_total"]
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    _main()
