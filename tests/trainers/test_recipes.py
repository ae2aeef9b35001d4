"""The paper's recipe configs load and take a step at small width, under GP 2 on gloo ranks,
on the released OC20 layout; fine-tuning starts from a checkpoint's weights (ours or upstream's)."""

from __future__ import annotations

import pytest
import torch
from helpers.oc20 import require_oc20_mini
from helpers.recipe_cases import SMALL_WIDTHS, finetune_epoch, recipe_step
from helpers.released_layout import write_released_dataset
from test_oc20_layouts import TRAIN, VAL

from ocp_graphpar.errors import UserFacingError


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    require_oc20_mini()
    return write_released_dataset(tmp_path_factory.mktemp("recipes") / "oc20", train=TRAIN, val=VAL)


def data(released, *, relax: bool = False, is2re: bool = False) -> dict:
    if is2re:  # IS2RE trains on initial structures, one per system
        splits = {"train": released / "is2rs" / "val", "val": released / "is2rs" / "val"}
    else:
        splits = {"train": released / "s2ef" / "train", "val": released / "s2ef" / "val"}
    if relax:
        splits["relax"] = released / "is2rs" / "val"
    return {"dataset": {split: {"src": str(path)} for split, path in splits.items()}}


S2EF_RECIPES = ["s2ef/gemnet_xl", "s2ef/dimenetpp_xl", "s2ef/gemnet_t_125M"]
RELAXATION_RECIPES = ["is2rs/gemnet_xl", "is2rs/dimenetpp_xl", "is2re/gemnet_xl_relaxation"]


@pytest.mark.parametrize("name", S2EF_RECIPES)
def test_s2ef_recipe_takes_a_step_at_gp2(name, gloo_world, released, tmp_path):
    results = gloo_world(2).run(recipe_step, name, str(tmp_path), data(released), gp_size=2)
    losses = [r["loss"] for r in results]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[0] == pytest.approx(losses[1])


@pytest.mark.parametrize("name", RELAXATION_RECIPES)
def test_relaxation_recipe_relaxes_with_is2rs_and_is2re_metrics(
    name, gloo_world, released, tmp_path
):
    overrides = data(released, relax=True) | {"task": {"relaxation_steps": 3}}
    [result, _] = gloo_world(2).run(recipe_step, name, str(tmp_path), overrides, True, gp_size=2)
    metrics = result["metrics"]
    assert {"is2re_energy_mae", "is2re_energy_within_threshold"} <= set(metrics)
    assert "is2rs_positions_average_distance_within_threshold" in metrics


@pytest.mark.parametrize("name", ["is2re/gemnet_xl_ft", "is2re/gemnet_xl_relaxation"])
def test_is2re_configs_name_a_registered_model_and_trainer(name):
    from fairchem.core.common.registry import registry
    from fairchem.core.trainers import OCPTrainer
    from helpers.ocp_trainer import load_repo_config

    config = load_repo_config(name)
    assert registry.get_model_class(config["model"]["name"]).__module__.startswith("ocp_graphpar")
    assert issubclass(registry.get_trainer_class(config.get("trainer", "ocp")), OCPTrainer)


def test_recipes_carry_the_papers_settings():
    from helpers.ocp_trainer import load_repo_config

    gemnet = load_repo_config("s2ef/gemnet_xl")
    assert gemnet["optim"]["lr_initial"] == 2e-4 and gemnet["optim"]["ema_decay"] == 0.999
    assert gemnet["optim"]["optimizer_params"] == {"amsgrad": True}
    assert (gemnet["optim"]["scheduler"], gemnet["optim"]["factor"]) == ("ReduceLROnPlateau", 0.8)
    assert [next(iter(f.items()))[1]["coefficient"] for f in gemnet["loss_functions"]] == [1, 100]
    normalizer = gemnet["dataset"]["train"]["transforms"]["normalizer"]
    assert normalizer["energy"]["mean"] == pytest.approx(-0.7554, abs=1e-4)
    assert (
        normalizer["energy"]["stdev"]
        == normalizer["forces"]["stdev"]
        == pytest.approx(2.8873, abs=1e-4)
    )
    assert gemnet["optim"]["checkpoint_every"] <= 5000  # not once per epoch (~1M steps on S2EF-All)
    assert load_repo_config("s2ef/dimenetpp_xl")["optim"]["lr_initial"] == 1e-4
    for name in RELAXATION_RECIPES:
        task = load_repo_config(name)["task"]
        assert task["relaxation_steps"] == 200 and "maxstep" in task["relax_opt"]  # LBFGS
    ft = load_repo_config("is2re/gemnet_xl_ft")
    assert (ft["optim"]["lr_initial"], ft["optim"]["max_epochs"], ft["optim"]["lr_gamma"]) == (
        3e-5,
        5,
        0.95,
    )
    assert ft["model"]["regress_forces"] is False and list(ft["outputs"]) == ["energy"]
    assert {k: ft["model"][k] for k in SMALL_WIDTHS["GemNetXL"]} == {
        k: gemnet["model"][k] for k in SMALL_WIDTHS["GemNetXL"]
    }  # the fine-tuned model has the S2EF model's widths


def test_gemnet_xl_ft_finetunes_from_an_s2ef_checkpoint(gloo_world, released, tmp_path):
    """The IS2RE fine-tuning recipe, two epochs at gp 2: it starts from the S2EF checkpoint's
    weights, decays the learning rate x0.95 once per epoch, and saves no path to the starting
    checkpoint in its own config (so predictions and the calculator never look for it)."""
    [s2ef, _] = gloo_world(2).run(
        recipe_step, "s2ef/gemnet_xl", str(tmp_path / "s2ef"), data(released), gp_size=2
    )
    overrides = data(released, is2re=True) | {
        "model": {"finetune_config": {"starting_checkpoint": s2ef["checkpoint"]}},
        "optim": {"max_epochs": 2},
    }
    results = gloo_world(2).run(
        finetune_epoch, "is2re/gemnet_xl_ft", str(tmp_path / "ft"), overrides, gp_size=2
    )
    saved = torch.load(s2ef["checkpoint"], map_location="cpu", weights_only=False)
    shadow = saved["ema"]["shadow_params"]
    ema = {n: t for names, t in zip(s2ef["parameter_names"], shadow, strict=True) for n in names}
    state = {k.removeprefix("module."): v for k, v in saved["state_dict"].items()}
    for result in results:
        starting = result["starting"]
        # every tensor from the S2EF run: its EMA weights (those fairchem validated with)
        # where it has them, else its state (fitted scale factors); its force head left out
        assert set(starting) < set(state) and any(
            "out_forces" in k for k in set(state) - set(starting)
        )
        for name, value in starting.items():
            torch.testing.assert_close(value, ema.get(name, state[name]), rtol=0, atol=0, msg=name)
        assert set(result["trainable"]) <= set(ema)  # every trained weight from the EMA
        steps = result["steps_per_epoch"]
        assert result["lrs"] == pytest.approx([3e-5] * steps + [3e-5 * 0.95] * steps)
        assert "finetune_config" not in result["saved_model_config"]


UPSTREAM_TWINS = {
    "s2ef/gemnet_xl": (
        "fairchem.core.models.gemnet.gemnet",
        "GemNetT",
        "gemnet_t",
        "GemNetXL",
        "emb_size_edge",
    ),
    "s2ef/dimenetpp_xl": (
        "fairchem.core.models.dimenet_plus_plus",
        "DimeNetPlusPlusWrap",
        "dimenetplusplus",
        "DimeNetPPXL",
        "hidden_channels",
    ),
}
OUR_OPTIONS = (
    "activation_checkpointing",
    "partition_weights",
    "auto_fit_scale_factors",
    "detach_angles",
    "input_exchange",
)


@pytest.mark.parametrize("name", sorted(UPSTREAM_TWINS))
def test_upstream_checkpoint_starts_our_model(name, tmp_path):
    """A model-zoo-format upstream checkpoint (DDP prefixes, its config) loads into our model
    exactly; one of other widths is refused, naming the width that differs."""
    import importlib

    from helpers.ocp_trainer import load_repo_config

    from ocp_graphpar import models
    from ocp_graphpar.trainers.finetune import load_starting_weights

    module, upstream_cls, upstream_name, ours_cls, width = UPSTREAM_TWINS[name]
    config = {k: v for k, v in load_repo_config(name)["model"].items() if k != "name"}
    config |= SMALL_WIDTHS[ours_cls]
    upstream_args = {k: v for k, v in config.items() if k not in OUR_OPTIONS}
    torch.manual_seed(1)
    upstream = getattr(importlib.import_module(module), upstream_cls)(**upstream_args)
    path = tmp_path / f"{upstream_name}.pt"
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in upstream.state_dict().items()},
            "config": {"model": {"name": upstream_name, **upstream_args}},
        },
        path,
    )
    ours = getattr(models, ours_cls)(**config)
    load_starting_weights(ours, {"starting_checkpoint": str(path)}, model_config=config)
    for key, value in upstream.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    wider = config | {width: 48}
    with pytest.raises(UserFacingError) as error:
        load_starting_weights(
            getattr(models, ours_cls)(**wider),
            {"starting_checkpoint": str(path)},
            model_config=wider,
        )
    message = str(error.value)
    assert "tensors differ in shape" in message
    assert f"{width} is {config[width]} in the checkpoint, 48 in this config." in message
