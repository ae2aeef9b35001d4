"""The demo's summary: metrics, files, and the graph-parallel figures, as JSON and Markdown.

Everything here is read from the stage records and from what fairchem wrote (TensorBoard logs,
prediction files), so the summary can be rebuilt at any time from a finished demo folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ocp_graphpar.atomic import write_atomic, write_json_atomic
from ocp_graphpar.tools.demo.options import GP_RANKS, RANKS, S2EF_CONFIG, DemoPaths

_IS2RS_LABELS = {
    "is2rs_positions_average_distance_within_threshold": "ADwT, average distance within threshold",
    "is2rs_positions_mae": "relaxed positions MAE (Å)",
    "is2rs_positions_mse": "relaxed positions MSE (Å²)",
    "is2re_energy_mae": "relaxed energy MAE (eV)",
    "is2re_energy_mse": "relaxed energy MSE (eV²)",
    "is2re_energy_within_threshold": "relaxed energy within 0.02 eV (fraction of systems)",
}


def s2ef_metrics(paths: DemoPaths, final: dict) -> tuple[dict, object]:
    """Validation energy/force MAE from fairchem's TensorBoard logs, the final model's scores on
    every validation frame beside the baselines (``final``: the predict stage's metrics), and the
    curves themselves."""
    from ocp_graphpar.tools.report import read_learning_curves

    curves = read_learning_curves(paths.train)
    steps, forces = curves["val/forces_mae"]
    metrics = {
        "evaluations": int(steps.size),
        "last_evaluation_step": int(steps[-1]),
        "val_energy_mae_last": curves.last("val/energy_mae"),
        "val_forces_mae_first": float(forces[0]),
        "val_forces_mae_last": curves.last("val/forces_mae"),
        "val_forces_mae_best": curves.best("val/forces_mae"),
        "zero_force_mae": final["zero_force_mae"],
        "reference_energy_mae": final["reference_energy_mae"],
        "final_over_zero_force": final["forces_over_zero_force"],
        "final_energy_over_reference": final["energy_over_reference"],
        "final_forces_cosine": final["forces_cosine"],
    }
    return metrics, curves


def plot_curves(curves, s2ef: dict, out: Path, title: str) -> Path:
    """The learning-curve PNG, written beside ``out`` and renamed into place."""
    from ocp_graphpar.tools.report import plot_learning_curves

    descriptor, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".png")
    os.close(descriptor)
    try:
        plot_learning_curves(
            curves,
            temporary,
            title=title,
            zero_force_baseline=s2ef["zero_force_mae"],
            reference_energy_baseline=s2ef["reference_energy_mae"],
        )
        os.chmod(temporary, 0o644)
        os.replace(temporary, out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return out


def footprint(measured: dict) -> dict:
    """Per-rank communication, memory and load of one training step, and their totals."""
    ranks = measured["ranks"]
    per_rank = [
        {
            "rank": rank,
            "comm_bytes": r["comm"]["bytes"],
            "comm_calls": r["comm"]["calls"],
            **{key: (r["load"] or {}).get(key) for key in ("atoms", "edges", "triplets")},
            "halo_atoms": (r["load"] or {}).get("halo_atoms"),
            **{
                f"{key}_bytes": r["memory"][key]
                for key in ("parameters", "gradients", "activations")
            },
        }
        for rank, r in enumerate(ranks)
    ]
    gradient_bytes = ranks[0]["memory"]["gradients"]
    return {
        "batch": measured["batch"],
        "gp_ranks": len(ranks),
        "comm_bytes_total": sum(r["comm"]["bytes"] for r in ranks),
        "comm_by_kind_rank0": ranks[0]["comm"]["by_kind"],
        "cut_edges": (ranks[0]["load"] or {}).get("cut_edges"),
        # DDP then all-reduces the gradients over the ranks (ring: 2 (P-1)/P of them per rank).
        "ddp_gradient_allreduce_bytes_per_rank": 2
        * (len(ranks) - 1)
        * gradient_bytes
        // len(ranks),
        "parameters": ranks[0]["memory"]["parameters"] // 4,  # float32
        "per_rank": per_rank,
    }


def build_summary(paths: DemoPaths, records: dict[str, dict], elapsed_s: float) -> dict:
    """The summary dict from the stage records (``records[stage]``: its completion record)."""
    out = {name: record["outputs"] for name, record in records.items()}
    s2ef, curves = s2ef_metrics(paths, out["predict"]["metrics"])
    schedule = out["train"]["schedule"]
    title = (
        f"GemNet-XL (demo widths), gp {GP_RANKS} on {RANKS} CPU ranks: "
        f"{out['data']['train_frames']} training frames, {schedule['total_steps']} steps"
    )
    png = plot_curves(curves, s2ef, paths.curves_png, title)
    files = {
        "dataset": out["data"]["dataset"],
        "checkpoint": out["train"]["checkpoint"],
        "s2ef_predictions": out["predict"]["predictions"],
        "relaxed_positions": out["relax"]["relaxed_positions"],
        "s2ef_submission": out["export"]["s2ef"]["file"],
        "is2rs_submission": out["export"]["is2rs"]["file"],
        "learning_curves": paths.relative(png),
        "tensorboard": f"{out['train']['run_dir']}/logs/tensorboard",
        "logs": paths.relative(paths.logs),
    }
    return {
        "demo_folder": str(paths.out),
        "model": f"GemNet-XL, demo widths ({S2EF_CONFIG.relative_to(S2EF_CONFIG.parents[2])})",
        "launch": f"fairchem --cpu --num-gpus {RANKS} --gp-gpus {GP_RANKS}",
        "data": out["data"],
        "training": {
            **schedule,
            "resumed_from_step": out["train"]["resumed_from_step"],
            "val_frames_in_training": out["train"]["val_frames_in_training"],
        },
        "s2ef": {**s2ef, "final_model_all_val_frames": out["predict"]["metrics"]},
        "is2rs": out["relax"]["metrics"],
        "leaderboard_files": {task: out["export"][task] for task in ("s2ef", "is2rs")},
        "graph_parallel_step": footprint(out["measure"]),
        "files": files,
        "stage_seconds": {name: record["seconds"] for name, record in records.items()},
        "wall_seconds_this_run": round(elapsed_s, 1),
        "notes": [
            "Energies are referenced per element (fit on the training frames), so the "
            "per-element-reference baseline predicts 0 and its MAE is the mean |energy|.",
            "Baselines on the same validation frames and free atoms: predicting zero forces, "
            "and predicting each frame's per-element reference energy.",
            "Leaderboard files: the demo has one validation split; its systems are dealt out in "
            "turn to the four OC20 split names (id, ood_ads, ood_cat, ood_both) so the files "
            "have the leaderboard's exact layout and pass `ocp-graphpar validate`. They are not "
            "predictions on OC20's test sets.",
            "Graph-parallel figures: one training step (forward, energy+force loss, backward) of "
            "the demo model with seeded weights on the batch above; bytes are what each rank "
            "receives through the model's collectives. DDP's gradient all-reduce comes on top.",
        ],
    }


def _mib(value: float) -> str:
    return f"{value / 2**20:.2f} MiB"


def markdown(summary: dict) -> str:
    """The summary as a short Markdown report."""
    s2ef, data, train = summary["s2ef"], summary["data"], summary["training"]
    final = s2ef["final_model_all_val_frames"]
    gp, files = summary["graph_parallel_step"], summary["files"]
    resumed = (
        f", resumed from step {train['resumed_from_step']}" if train["resumed_from_step"] else ""
    )
    lines = [
        f"# `make demo`: {summary['model']}",
        "",
        f"Launched as `{summary['launch']}` (graph parallelism over 2 CPU ranks on gloo).",
        "",
        f"- Data: {data['source']}: {data['train_systems']} training systems "
        f"({data['train_frames']} frames), {data['val_systems']} validation systems "
        f"({data['val_frames']} frames)"
        + (f", every {data['frame_stride']}th frame" if data["frame_stride"] > 1 else "")
        + ".",
        f"- Training: {train['total_steps']} steps ({train['epochs']} epoch(s) of "
        f"{train['steps_per_epoch']}), validation every {train['eval_every']} steps{resumed}.",
        "",
        "## S2EF (validation frames)",
        "",
        f"fairchem's validations during training ({s2ef['evaluations']}, on "
        f"{train['val_frames_in_training']} validation frames) and the final model's S2EF "
        f"predictions on all {final['frames']} validation frames (forces of free atoms):",
        "",
        "| metric | value |",
        "|---|---|",
        f"| energy MAE, last validation, step {s2ef['last_evaluation_step']} (eV) "
        f"| {s2ef['val_energy_mae_last']:.4f} |",
        f"| force MAE, first validation (eV/Å) | {s2ef['val_forces_mae_first']:.4f} |",
        f"| force MAE, last validation (eV/Å) | {s2ef['val_forces_mae_last']:.4f} |",
        f"| force MAE, best validation (eV/Å) | {s2ef['val_forces_mae_best']:.4f} |",
        f"| final model, all validation frames: energy MAE (eV) | {final['energy_mae']:.4f} |",
        f"| final model, all validation frames: force MAE (eV/Å) | {final['forces_mae']:.4f} |",
        f"| final model, all validation frames: force cosine | {s2ef['final_forces_cosine']:.3f} |",
        f"| baseline: force MAE of predicting zero forces (eV/Å) | {s2ef['zero_force_mae']:.4f} |",
        f"| baseline: energy MAE of the per-element reference energy (eV) "
        f"| {s2ef['reference_energy_mae']:.4f} |",
        f"| **final force MAE / zero-force baseline** | **{s2ef['final_over_zero_force']:.0%}** |",
        f"| **final energy MAE / per-element-reference baseline** "
        f"| **{s2ef['final_energy_over_reference']:.0%}** |",
        "",
        "## IS2RS (relaxations of the validation systems)",
        "",
        "| metric | value |",
        "|---|---|",
        *(
            f"| {_IS2RS_LABELS.get(name, name)} | {value:.4f} |"
            for name, value in summary["is2rs"].items()
        ),
        "",
        f"## One training step at gp {gp['gp_ranks']}: communication and memory per rank",
        "",
        f"Batch: {gp['batch']['systems']} validation systems, {gp['batch']['atoms']} atoms; "
        f"model: {gp['parameters']:,} parameters. Through the model's collectives: "
        f"{gp['comm_bytes_total']:,} bytes in all ({gp['cut_edges']} cut edges); DDP's "
        f"gradient all-reduce adds {gp['ddp_gradient_allreduce_bytes_per_rank']:,} bytes per "
        "rank.",
        "",
        "| rank | atoms | edges | triplets | halo atoms | bytes received | calls "
        "| parameters | gradients | activations (peak) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['rank']} | {r['atoms']} | {r['edges']} | {r['triplets']} | {r['halo_atoms']} "
            f"| {r['comm_bytes']:,} | {r['comm_calls']} | {_mib(r['parameters_bytes'])} "
            f"| {_mib(r['gradients_bytes'])} | {_mib(r['activations_bytes'])} |"
            for r in gp["per_rank"]
        ),
        "",
        "## Files (in " + summary["demo_folder"] + ")",
        "",
        *(f"- {name}: `{path}`" for name, path in files.items()),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in summary["notes"]),
        "",
    ]
    return "\n".join(lines)


def write_summary(paths: DemoPaths, summary: dict) -> str:
    """``summary.json`` and ``summary.md``, each written atomically; returns the Markdown."""
    text = markdown(summary)
    write_json_atomic(paths.summary_json, json.loads(json.dumps(summary, default=float)))
    write_atomic(paths.summary_md, text)
    return text
