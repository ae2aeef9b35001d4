"""The demo's stages, each a function from earlier stages' outputs to its own.

Every stage has an *inputs* function (what identifies its result: options, config contents and
the fingerprints of the stages it reads) and a *run* function (makes the outputs, returns what
later stages need as a JSON-serialisable dict, paths relative to the demo folder). The pipeline
(:mod:`ocp_graphpar.tools.demo.pipeline`) skips a stage whose record matches its inputs.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from ocp_graphpar.atomic import fingerprint
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.demo.launcher import fairchem_command, run_streamed
from ocp_graphpar.tools.demo.options import (
    GP_RANKS,
    IS2RS_CONFIG,
    RANKS,
    S2EF_CONFIG,
    TIMESTAMP_ID,
    DemoOptions,
    DemoPaths,
)
from ocp_graphpar.tools.demo.schedule import auto_frame_stride, training_schedule
from ocp_graphpar.tools.demo.state import file_identity
from ocp_graphpar.tools.export import SPLITS

#: A leaderboard file needs one system per OC20 test split, and training needs one more.
MIN_VAL_SYSTEMS = len(SPLITS)
#: Validation during training uses a fixed random sample of this many validation frames (a
#: validation pass costs about as much per batch as a training step on CPU); the predict stage
#: then scores the final model on every validation frame.
VAL_SAMPLE_FRAMES = 48


# ----------------------------------------------------------------------------- configs


def resolved_config(config_file: Path) -> dict:
    """A fairchem config with its includes resolved (as ``fairchem --config-yml`` reads it)."""
    from fairchem.core.common.utils import load_config

    if not config_file.is_file():
        raise UserFacingError(
            f"{config_file} not found: the demo runs from a checkout of this repository "
            "(pip install -e . / make setup), where configs/ lives."
        )
    config, _, _ = load_config(str(config_file), include_paths=[str(config_file.parents[2])])
    return config


def config_identity(config_file: Path) -> dict:
    """The config's path and a hash of its resolved content: editing it reruns what it shapes."""
    content = fingerprint(resolved_config(config_file))
    return {"file": str(config_file.relative_to(config_file.parents[2])), "content": content}


def _dataset_overrides(paths: DemoPaths) -> list[str]:
    return [
        f"--dataset.train.src={paths.data / 's2ef' / 'train'}",
        f"--dataset.val.src={paths.data / 's2ef' / 'val'}",
    ]


# ----------------------------------------------------------------------------- 1. data


def data_inputs(options: DemoOptions) -> dict:
    """The embedded set's recipe, or the trajectory files' identities and the options applied."""
    from ocp_graphpar.tools.data.reading import expand_inputs

    common = {"val_fraction": options.val_fraction, "seed": options.seed, "referenced": True}
    if not options.data:
        embedded = {
            "systems": options.systems,
            "emt_steps": options.emt_steps,
            "frames": asdict(_frame_counts(options)),
        }
        return {"source": "embedded EMT demo", **embedded, **common}
    files = expand_inputs(options.data)  # names a missing path or an empty folder
    return {
        "source": "trajectories",
        "files": [file_identity(f) for f in files],
        "frame_stride": options.frame_stride or f"auto for {options.steps} steps",
        "max_atoms": options.max_atoms,
        **common,
    }


def build_data(options: DemoOptions, paths: DemoPaths) -> dict:
    """S2EF train/val and IS2RS val LMDBs in ``data/``, written by the data tools (staged: the
    folder appears only once complete). Energies are referenced per element (fit on training
    frames), as OC20's raw DFT energies are far from the normalizer's zero mean."""
    if options.data:
        summary, stride = _trajectory_dataset(options, paths.data)
    else:
        summary, stride = _embedded_dataset(options, paths.data), 1
    print(summary.format())
    splits = summary.splits
    return {
        "dataset": paths.relative(paths.data),
        "train_systems": len(summary.train_systems),
        "val_systems": len(summary.val_systems),
        "train_frames": splits["s2ef/train"].samples,
        "val_frames": splits["s2ef/val"].samples,
        "frame_stride": stride,
        "source": ", ".join(map(str, options.data)) or "embedded EMT demo (ocp-graphpar data demo)",
    }


def _val_count(n_systems: int, val_fraction: float) -> int:
    from ocp_graphpar.tools.data import split_systems

    return len(split_systems([str(i) for i in range(n_systems)], val_fraction)[1])


def _frame_counts(options: DemoOptions):
    from ocp_graphpar.tools.data.demo import DEFAULT_FRAMES, FrameCounts

    return FrameCounts(
        relaxation=DEFAULT_FRAMES.relaxation, md=options.md_frames, rattled=options.rattled_frames
    )


def _embedded_dataset(options: DemoOptions, out: Path):
    from ocp_graphpar.tools.data import make_demo_dataset

    if (
        options.systems < MIN_VAL_SYSTEMS + 1
        or _val_count(options.systems, options.val_fraction) < MIN_VAL_SYSTEMS
    ):
        raise UserFacingError(
            f"--systems {options.systems} with --val-fraction {options.val_fraction} gives fewer "
            f"than {MIN_VAL_SYSTEMS} validation systems; the leaderboard files need one per "
            "OC20 split. Raise --systems or --val-fraction."
        )
    return make_demo_dataset(
        out,
        systems=options.systems,
        seed=options.seed,
        val_fraction=options.val_fraction,
        linear_reference=True,
        overwrite=True,
        max_steps=options.emt_steps,
        counts=_frame_counts(options),
    )


def _trajectory_dataset(options: DemoOptions, out: Path):
    """Read, filter by size, split in domain, thin, write; returns (summary, frame stride)."""
    from ocp_graphpar.tools.data import (
        in_domain_split_seed,
        read_trajectories,
        split_systems,
        systems_to_lmdbs,
        thin_frames,
    )

    systems = read_trajectories(options.data)
    if options.max_atoms:
        kept = [s for s in systems if s.n_atoms <= options.max_atoms]
        print(f"kept {len(kept)} of {len(systems)} systems with at most {options.max_atoms} atoms")
        systems = kept
    if len(systems) < MIN_VAL_SYSTEMS + 1:
        raise UserFacingError(
            f"the demo needs at least {MIN_VAL_SYSTEMS + 1} trajectories (one relaxation each: "
            f"{MIN_VAL_SYSTEMS} validation systems, one per OC20 split, and training), got "
            f"{len(systems)} usable. Pass more files, or a larger --max-atoms."
        )
    n_val = max(MIN_VAL_SYSTEMS, round(len(systems) * options.val_fraction))
    val_fraction = min(n_val, len(systems) - 1) / len(systems)
    try:
        seed = in_domain_split_seed(systems, val_fraction)
    except UserFacingError as error:
        print(f"warning: {error} Using split seed {options.seed}.")
        seed = options.seed
    train_names, _ = split_systems([s.name for s in systems], val_fraction, seed)
    train_frames = sum(s.n_frames for s in systems if s.name in set(train_names))
    stride = options.frame_stride or auto_frame_stride(train_frames, options.steps, _batch_size())
    summary = systems_to_lmdbs(
        [thin_frames(s, stride) for s in systems],
        out,
        val_fraction=val_fraction,
        seed=seed,
        linear_reference=True,
        overwrite=True,
        origin="ocp-graphpar demo",
    )
    return summary, stride


def _batch_size() -> int:
    return int(resolved_config(S2EF_CONFIG)["optim"]["batch_size"])


# ----------------------------------------------------------------------------- 2. train


def train_inputs(options: DemoOptions, data_fingerprint: str) -> dict:
    return {
        "data": data_fingerprint,
        "config": config_identity(S2EF_CONFIG),
        "ranks": RANKS,
        "gp_ranks": GP_RANKS,
        "steps": options.steps,
        "evaluations": options.evaluations,
        "val_sample_frames": VAL_SAMPLE_FRAMES,
    }


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer steps a fairchem checkpoint has done."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("step", 0))


def train(options: DemoOptions, paths: DemoPaths, data: dict, resume: bool) -> dict:
    """GemNet-XL (demo widths) trained through ``fairchem --mode train`` on 2 CPU ranks in one
    graph-parallel group; ``resume`` continues from the last checkpoint of an interrupted run
    (same step counter, data order, optimizer and EMA state)."""
    schedule = training_schedule(
        data["train_frames"], _batch_size(), options.steps, options.evaluations
    )
    print(
        f"{schedule.total_steps} steps = {schedule.epochs} epoch(s) x {schedule.steps_per_epoch}; "
        f"validation every {schedule.eval_every} steps, checkpoint every "
        f"{schedule.checkpoint_every}; learning-rate warm-up {schedule.warmup_steps} steps, "
        f"decay at {list(schedule.lr_milestones) or 'none (too short a run)'}"
    )
    checkpoint = paths.checkpoint if resume and paths.checkpoint.is_file() else None
    resumed_from = checkpoint_step(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:
        print(f"resuming from {checkpoint} (step {resumed_from})")
    else:
        if resume:
            print("the interrupted run left no checkpoint: training from the start")
        _fresh(paths.train)  # nothing of an earlier attempt may leak into this run's logs
    overrides = [*_dataset_overrides(paths), *schedule.overrides()]
    if data["val_frames"] > VAL_SAMPLE_FRAMES:
        overrides.append(f"--dataset.val.sample_n={VAL_SAMPLE_FRAMES}")
        print(f"validation during training on {VAL_SAMPLE_FRAMES} of {data['val_frames']} frames")
    command = fairchem_command(
        "train",
        S2EF_CONFIG,
        paths.train,
        ranks=RANKS,
        gp_ranks=GP_RANKS,
        timestamp_id=TIMESTAMP_ID,
        checkpoint=checkpoint,
        overrides=overrides,
        print_every=10,
    )
    run_streamed(command, paths.logs / "train.log")
    done = checkpoint_step(paths.checkpoint)
    if done != schedule.total_steps:
        raise RuntimeError(
            f"training stopped at step {done} of {schedule.total_steps}; see {paths.logs}/train.log"
        )
    return {
        "run_dir": paths.relative(paths.train),
        "checkpoint": paths.relative(paths.checkpoint),
        "resumed_from_step": resumed_from,
        "val_frames_in_training": min(data["val_frames"], VAL_SAMPLE_FRAMES),
        "schedule": asdict(schedule),
        "command": " ".join(command[1:]),
    }


# ----------------------------------------------------------------------------- 3. predict


def predict_inputs(train_fingerprint: str) -> dict:
    return {"train": train_fingerprint, "config": config_identity(S2EF_CONFIG)}


def predict(paths: DemoPaths, trained: dict) -> dict:
    """S2EF energies and forces of every validation frame (``fairchem --mode predict``), scored
    beside the zero-force and per-element-reference baselines."""
    from ocp_graphpar.tools.export import resolve_prediction_file
    from ocp_graphpar.tools.report import score_s2ef_predictions

    _fresh(paths.predict)
    test_set = paths.data / "s2ef" / "val"
    overrides = [
        *_dataset_overrides(paths),
        f"--dataset.test.src={test_set}",
        "--task.prediction_dtype=float32",
    ]
    command = fairchem_command(
        "predict",
        S2EF_CONFIG,
        paths.predict,
        ranks=RANKS,
        gp_ranks=GP_RANKS,
        timestamp_id=TIMESTAMP_ID,
        checkpoint=paths.resolve(trained["checkpoint"]),
        overrides=overrides,
    )
    run_streamed(command, paths.logs / "predict.log")
    predictions = resolve_prediction_file("s2ef", paths.predict)
    scores = score_s2ef_predictions(predictions, test_set)
    print(
        f"on all {scores.frames} validation frames: force MAE {scores.forces_mae:.4f} eV/Å "
        f"({scores.forces_over_zero_force:.0%} of predicting zero forces), energy MAE "
        f"{scores.energy_mae:.4f} eV ({scores.energy_over_reference:.0%} of predicting the "
        f"per-element reference energy), force cosine {scores.forces_cosine:.3f}"
    )
    return {
        "predictions": paths.relative(predictions),
        "test_set": paths.relative(test_set),
        "metrics": scores.as_dict(),
    }


# ----------------------------------------------------------------------------- 4. relax


def relax_inputs(options: DemoOptions, train_fingerprint: str) -> dict:
    return {
        "train": train_fingerprint,
        "config": config_identity(IS2RS_CONFIG),
        "relaxation_steps": options.relaxation_steps,
    }


def relax(options: DemoOptions, paths: DemoPaths, trained: dict) -> dict:
    """IS2RS: LBFGS relaxations of the validation systems' initial structures under graph
    parallelism (``fairchem --mode run-relaxations``), scored against the DFT/EMT relaxed ones."""
    from ocp_graphpar.tools.export import resolve_prediction_file
    from ocp_graphpar.tools.report import read_learning_curves

    _fresh(paths.relax)
    overrides = [
        *_dataset_overrides(paths),
        f"--dataset.relax.src={paths.data / 'is2rs' / 'val'}",
        f"--task.relaxation_steps={options.relaxation_steps}",
    ]
    command = fairchem_command(
        "run-relaxations",
        IS2RS_CONFIG,
        paths.relax,
        ranks=RANKS,
        gp_ranks=GP_RANKS,
        timestamp_id=TIMESTAMP_ID,
        checkpoint=paths.resolve(trained["checkpoint"]),
        overrides=overrides,
    )
    run_streamed(command, paths.logs / "relax.log")
    relaxed = resolve_prediction_file("is2rs", paths.relax)
    logged = read_learning_curves(paths.relax)  # fairchem logs the IS2RS/IS2RE metrics there
    metrics = {
        tag.split("/", 1)[1]: logged.last(tag)
        for tag in sorted(logged.scalars)
        if tag.startswith("val/is2r")
    }
    if not metrics:
        raise RuntimeError(f"fairchem logged no IS2RS metrics; see {paths.logs}/relax.log")
    return {"relaxed_positions": paths.relative(relaxed), "metrics": metrics}


# ----------------------------------------------------------------------------- 5. export


def export_inputs(predict_fingerprint: str, relax_fingerprint: str) -> dict:
    return {"predict": predict_fingerprint, "relax": relax_fingerprint}


def export(paths: DemoPaths, predicted: dict, relaxed: dict) -> dict:
    """``s2ef_submission.npz`` and ``is2rs_submission.npz`` in the leaderboard format, checked
    by the export tools (see :mod:`ocp_graphpar.tools.demo.splits` for the split files)."""
    from ocp_graphpar.tools.demo.splits import leaderboard_file
    from ocp_graphpar.tools.export import load_submission, summarize_submission

    _fresh(paths.export)
    outputs = {}
    for task, source in (
        ("s2ef", predicted["predictions"]),
        ("is2rs", relaxed["relaxed_positions"]),
    ):
        path = leaderboard_file(
            task, paths.resolve(source), paths.export / task, paths.submission(task)
        )
        arrays, _ = load_submission(path)
        systems = {s.split: s.systems for s in summarize_submission(arrays, task)}
        print(f"wrote {path} (valid {task} submission; systems per split: {systems})")
        outputs[task] = {"file": paths.relative(path), "systems_per_split": systems}
    return outputs


# ----------------------------------------------------------------------------- 6. measure


def measure_inputs(options: DemoOptions, data_fingerprint: str) -> dict:
    return {
        "data": data_fingerprint,
        "config": config_identity(S2EF_CONFIG),
        "ranks": GP_RANKS,
        "systems": options.measure_systems,
    }


def measure(options: DemoOptions, paths: DemoPaths) -> dict:
    """Bytes through collectives, memory and load per rank for one training step at gp 2."""
    from ocp_graphpar.tools.demo.footprint import (
        batch_description,
        measure_training_step,
        model_config,
        sample_batch,
    )

    batch = sample_batch(paths.data / "s2ef" / "val", systems=options.measure_systems)
    described = batch_description(batch)
    print(
        f"one training step on {described['systems']} systems ({described['atoms']} atoms), "
        f"{GP_RANKS} gloo ranks"
    )
    model = model_config(resolved_config(S2EF_CONFIG))
    ranks = measure_training_step(model, batch, ranks=GP_RANKS)
    return {"batch": described, "ranks": ranks}


# ----------------------------------------------------------------------------- helpers


def _fresh(folder: Path) -> None:
    """Start a stage that cannot resume from an empty folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
