"""``optim.shard_optimizer_state``: optimizer state and EMA partitioned over all ranks (DP x GP)
give the unsharded steps, EMA weights and checkpoints, at a fraction of the per-rank bytes."""

from __future__ import annotations

import pytest
import torch
from helpers.ocp_trainer import data_overrides
from helpers.sharding_cases import (
    TINY_GEMNET,
    build_error,
    fairchem_train,
    resume,
    resume_mapped,
    save_alone_in_a_submitit_job,
    toy_steps,
    train_and_save,
)

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.measure.model_state import bytes_per_parameter
from ocp_graphpar.trainers.sharded_optimizer import Partition
from ocp_graphpar.trainers.sharded_state import shard_optimizer_state

#: Four steps of 4 structures; at 2 DP x 2 GP each DP group takes 2 of them.
BATCHES = [[0, 3, 5, 8], [1, 2, 6, 7], [4, 9, 10, 11], [12, 13, 14, 15]]
SAVE_AFTER = 2
TOLERANCE = 1e-9


def settings(demo_data, *, shard: bool) -> dict:
    """AMSGrad, weight decay (two param groups), a warm-up schedule, an EMA and a gradient
    clip that acts (the tiny model's gradient norm is about 150)."""
    return {
        **data_overrides(demo_data),
        "model": TINY_GEMNET,
        "optim": {
            "shard_optimizer_state": shard,
            "weight_decay": 0.01,
            "clip_grad_norm": 1.0,
            "ema_decay": 0.5,
            "warmup_steps": 3,
        },
    }


@pytest.fixture(scope="module")
def runs(gloo_world, demo_data, tmp_path_factory):
    """The same four steps at 2 DP x 2 GP, unsharded and sharded, each saving after two."""
    world = gloo_world(4)
    return {
        shard: world.run(
            train_and_save,
            str(tmp_path_factory.mktemp(f"shard_{shard}")),
            settings(demo_data, shard=shard),
            BATCHES,
            SAVE_AFTER,
            gp_size=2,
        )
        for shard in (False, True)
    }


def largest_difference(a: dict, b: dict) -> float:
    """The largest ``|a - b| / max(|a|, 1e-3)`` over every entry of every tensor."""
    return max(float(((a[n] - b[n]).abs() / a[n].abs().clamp(min=1e-3)).max()) for n in a)


def assert_same_structure(a, b, path: str = "") -> None:
    """Equal keys (in order), lengths and plain values; tensors of equal shape, dtype and
    values to 1e-9."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same_structure(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_structure(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert (a.shape, a.dtype) == (b.shape, b.dtype), path
        assert torch.allclose(a, b, rtol=TOLERANCE, atol=0), path
    else:
        assert a == b, path


def test_sharded_steps_equal_unsharded_steps_at_2dp_x_2gp(runs):
    """Weights and EMA weights after four steps (AMSGrad, two param groups, clipping, EMA,
    warm-up), on every rank; the clipped gradient norm fairchem logs is unchanged."""
    plain, sharded = runs[False], runs[True]
    assert [r["sharded"] for r in sharded] == [True] * 4
    assert not plain[0]["sharded"]
    for rank in range(4):
        assert largest_difference(plain[rank]["weights"], sharded[rank]["weights"]) < TOLERANCE
        assert largest_difference(plain[rank]["ema"], sharded[rank]["ema"]) < TOLERANCE
    moved = largest_difference(plain[0]["weights"], plain[0]["ema"])
    assert moved > 1e-3  # the EMA lags: the comparison is not vacuous
    plain_norms = [s["grad_norm"] for s in plain[0]["steps"]]
    assert [s["grad_norm"] for s in sharded[0]["steps"]] == pytest.approx(plain_norms, rel=1e-12)
    assert min(plain_norms) > 1.0  # clipping acted on every step


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def without_config(checkpoint: dict, *, sharded: bool) -> dict:
    """The checkpoint less its config (which names the run's folders), having checked that
    the config's optim section differs in the sharding key only."""
    optim = dict(checkpoint.pop("config")["optim"])
    assert optim.pop("shard_optimizer_state") is sharded
    return {**checkpoint, "optim_settings": optim}


@pytest.mark.parametrize("name", ["checkpoint", "preempted", "best"])
def test_checkpoint_is_upstreams_format(name, runs):
    """The sharded run's checkpoints hold what the unsharded run's do (torch's AdamW
    state_dict, fairchem's EMA state_dict): saved by every rank mid-run, by rank 0 alone at a
    preemption signal after every rank gathered at the step boundary, and the best checkpoint
    (the EMA weights, no training state)."""
    plain = without_config(load(runs[False][0][name]), sharded=False)
    sharded = without_config(load(runs[True][0][name]), sharded=True)
    assert_same_structure(plain, sharded)
    if name != "best":
        state = sharded["optimizer"]["state"]
        assert len(state) >= 40
        assert set(state[0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        assert len(sharded["ema"]["shadow_params"]) == len(state)
    else:
        assert "optimizer" not in sharded
        weights = sharded["state_dict"]
        ema = runs[True][0]["ema"]
        assert all(torch.equal(weights[f"module.{n}"], ema[n]) for n in ema)


def test_rank_0_alone_in_a_submitit_handler_outside_training(gloo_world, demo_data, tmp_path):
    """Before the first step rank 0 knows the whole state and writes it; afterwards it
    writes nothing rather than wait for ranks that will not gather."""
    [first, _] = gloo_world(2).run(
        save_alone_in_a_submitit_job, str(tmp_path), settings(demo_data, shard=True), BATCHES[0]
    )
    assert first["after_step"] is None
    assert_same_structure(load(first["together"]), load(first["alone"]))


@pytest.mark.parametrize(("world_size", "shard"), [(1, False), (2, True)])
def test_sharded_checkpoint_resumes_exactly(
    world_size, shard, runs, gloo_world, demo_data, tmp_path
):
    """Written sharded at world 4; loaded unsharded at world 1 and sharded at world 2 (one
    GP group of 2), the last two steps give the uninterrupted run's weights and EMA."""
    uninterrupted = runs[True][0]
    results = gloo_world(world_size).run(
        resume,
        str(tmp_path),
        settings(demo_data, shard=shard),
        uninterrupted["checkpoint"],
        BATCHES[SAVE_AFTER:],
    )
    for result in results:
        assert result["resumed_at"] == SAVE_AFTER
        assert result["sharded"] == shard
        assert largest_difference(uninterrupted["weights"], result["weights"]) < TOLERANCE
        assert largest_difference(uninterrupted["ema"], result["ema"]) < TOLERANCE


def test_sharded_resume_reads_the_checkpoint_mapped(runs, gloo_world, demo_data, tmp_path):
    """Through the trainer's ``load_checkpoint`` at world 2: one ``torch.load``, with
    ``mmap``; no mapping of the file left once loaded; the file then truncated in place (a
    page still mapped would fault), and the last two steps still give the uninterrupted
    run's weights and EMA."""
    uninterrupted = runs[True][0]
    checkpoint, overrides = uninterrupted["checkpoint"], settings(demo_data, shard=True)
    for result in gloo_world(2).run(
        resume_mapped, str(tmp_path), overrides, checkpoint, BATCHES[SAVE_AFTER:]
    ):
        assert (result["loads"], result["mapped_after"]) == ([True], False)
        assert result["resumed_at"] == SAVE_AFTER
        for key in ("weights", "ema"):
            assert largest_difference(uninterrupted[key], result[key]) < TOLERANCE


def test_sharding_cuts_per_rank_model_state_at_world_4(runs):
    """Counted from the tensors each rank holds: at most 0.55x of the unsharded bytes on every
    rank (AMSGrad: 24 bytes per parameter unsharded, 8 + 16 / 4 = 12 sharded), and the
    planner's formula agrees with the count."""
    plain = runs[False][0]["bytes"]
    for result in runs[True]:
        sharded = result["bytes"]
        assert sharded.total <= 0.55 * plain.total, (sharded, plain)
        assert (sharded.parameters, sharded.gradients) == (plain.parameters, plain.gradients)
    # The bench's one-process estimate from the unsharded run matches every rank's count.
    assert runs[False][0]["simulated"] == [r["bytes"] for r in runs[True]]
    parameters = plain.parameters / 8  # float64
    optim = {"optimizer_params": {"amsgrad": True}, "ema_decay": 0.5}
    for shard, measured in ((False, plain), (True, runs[True][0]["bytes"])):
        per_parameter = bytes_per_parameter(
            optim={**optim, "shard_optimizer_state": shard}, world_size=4, element_size=8
        )
        assert measured.total == pytest.approx(parameters * per_parameter.total, rel=0.15)


def test_fairchem_training_loop_is_unchanged(gloo_world, demo_data, tmp_path):
    """fairchem's own loop at 2 DP x 2 GP for two epochs, validating every 2 steps (EMA
    weights in and out, best checkpoints, test predictions): the same weights and
    checkpoints, in float32 exactly."""
    results = {}
    for shard in (False, True):
        overrides = settings(demo_data, shard=shard)
        overrides["optim"] |= {"max_epochs": 2, "eval_every": 2}
        overrides["dataset"]["test"] = {"src": overrides["dataset"]["val"]["src"]}
        results[shard] = gloo_world(4).run(
            fairchem_train, str(tmp_path / str(shard)), overrides, gp_size=2
        )
    plain = results[False][0]
    for result in results[True]:
        assert result["step"] == plain["step"] == 6
        assert all(torch.equal(w, plain["weights"][n]) for n, w in result["weights"].items())
    for name, checkpoint in results[True][0]["checkpoints"].items():
        expected = without_config(plain["checkpoints"][name], sharded=False)
        assert_same_structure(expected, without_config(checkpoint, sharded=True))


def test_toy_optimizer_and_ema_equal_upstreams_with_idle_ranks(gloo_world):
    """AdamW (two groups, a frozen tensor, a LambdaLR) and an EMA counting its updates, on
    three trainable tensors over four ranks: weights, EMA weights, restored weights and both
    state dicts equal the unsharded objects' on every rank."""
    world = gloo_world(4)
    plain, sharded = world.run(toy_steps, False, 3), world.run(toy_steps, True, 3)
    for rank in range(4):
        for key in ("weights", "ema"):
            assert largest_difference(plain[rank][key], sharded[rank][key]) < TOLERANCE
        assert sharded[rank]["restored"]
    assert_same_structure(plain[0]["optimizer"], sharded[0]["optimizer"])
    assert_same_structure(plain[0]["ema_state"], sharded[0]["ema_state"])


def test_partition_balances_elements():
    """The tiny GemNet's sizes over four ranks: the fullest rank holds just the largest
    tensor, the least possible."""
    tensors = [
        torch.nn.Parameter(torch.empty(n))
        for n in (664, 192, 160, *[64] * 20, *[32] * 8, *[16] * 3, 1)
    ]
    partition = Partition.balanced(tensors, rank=0, world_size=4)
    loads = [0] * 4
    for tensor in tensors:
        loads[partition.owner(tensor)] += tensor.numel()
    assert max(loads) == 664 and sum(loads) == 2601


@pytest.mark.parametrize(
    ("optim", "message"),
    [
        ({"shard_optimizer_state": "yes"}, "must be true or false"),
        ({"shard_optimizer_state": 1}, "must be true or false"),
        ({"shard_optimizer_state": True, "optimizer": "LBFGS"}, "LBFGS does not"),
    ],
)
def test_bad_settings_are_user_facing_errors(optim, message):
    with pytest.raises(UserFacingError, match=message):
        shard_optimizer_state(optim)


def test_trainer_rejects_a_bad_setting_before_training(gloo_world, demo_data, tmp_path):
    overrides = {**settings(demo_data, shard=True), "optim": {"shard_optimizer_state": "yes"}}
    [message] = gloo_world(1).run(build_error, str(tmp_path), overrides)
    assert message.startswith("UserFacingError: optim.shard_optimizer_state must be true")


def test_trainer_rejects_a_bad_bucket_size_before_training(gloo_world, demo_data, tmp_path):
    overrides = settings(demo_data, shard=True)
    overrides["optim"] = {**overrides["optim"], "shard_bucket_mb": 0}
    [message] = gloo_world(1).run(build_error, str(tmp_path), overrides)
    assert message.startswith("UserFacingError: optim.shard_bucket_mb must be a positive")
