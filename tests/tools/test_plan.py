"""``ocp-graphpar plan``: the traced formulas against real models and measured memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fairchem.core.common.utils import load_config
from helpers.dimenet_cases import TINY as DIMENET_TINY
from helpers.oc20 import require_oc20_mini

from ocp_graphpar.cli import main
from ocp_graphpar.measure.contenders import build_contender
from ocp_graphpar.measure.model_state import ModelStateBytes
from ocp_graphpar.measure.planner.estimate import (
    SETTINGS,
    GraphSize,
    PlanRow,
    activation_bytes,
    model_state,
    recommend,
)
from ocp_graphpar.measure.planner.trace import (
    WIDTHS,
    model_graph_size,
    precomputed_graph,
    trace_model,
)
from ocp_graphpar.measure.steps import measure_contender, training_step
from ocp_graphpar.tools.bench.systems import load_batch

REPO = Path(__file__).resolve().parents[2]


def demo_gemnet() -> dict:
    config = dict(load_config(str(REPO / "configs/s2ef/gemnet_xl_demo.yml"))[0]["model"])
    config.pop("name")
    return {**config, **precomputed_graph("gemnet")}


# DimeNet++ at widths between the tests' tiny model and the demo (a small sympy basis, so the
# models build in a second).
DIMENET = {
    **DIMENET_TINY,
    "hidden_channels": 48,
    "out_emb_channels": 40,
    "int_emb_size": 16,
    "basis_emb_size": 6,
}
PAINN = {
    "hidden_channels": 48,
    "num_layers": 2,
    "num_rbf": 16,
    "cutoff": 6.0,
    "max_neighbors": 50,
    "otf_graph": False,
}
CONFIGS = {"gemnet": demo_gemnet, "dimenet": lambda: dict(DIMENET), "painn": lambda: dict(PAINN)}


@pytest.fixture(autouse=True)
def float32_default():
    """Other tests' upstream models set float64 as the default dtype; plan for float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def traces():
    cache = {}

    def get(family: str, checkpointing: bool = False):
        if (family, checkpointing) not in cache:
            config = {**CONFIGS[family](), "activation_checkpointing": checkpointing}
            cache[family, checkpointing] = trace_model(family, config)
        return cache[family, checkpointing]

    return get


@pytest.fixture(scope="module")
def oc20_batch():
    mini = require_oc20_mini()
    systems = [str(mini / "random1000100.traj"), str(mini / "random1000120.traj")]
    return load_batch(systems, cutoff=6.0, max_neighbors=50)


def widths_of(family: str, config: dict) -> dict:
    return {name: config[name] for name in WIDTHS[family] if name in config}


@pytest.mark.parametrize("family", ["gemnet", "dimenet", "painn"])
def test_parameter_formula_counts_the_real_model(traces, family):
    config = CONFIGS[family]()
    model = build_contender("ours", family, config)
    expected = sum(p.numel() for p in model.parameters())
    assert traces(family).parameters.evaluate(widths_of(family, config)) == expected
    wider = {name: value + 5 for name, value in widths_of(family, config).items()}
    model = build_contender("ours", family, {**config, **wider})
    assert traces(family).parameters.evaluate(wider) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("gp", [1, 2])
@pytest.mark.parametrize("family", ["gemnet", "dimenet", "painn"])
def test_activation_estimate_within_20_percent_of_measured_peak(
    gloo_world, traces, oc20_batch, family, gp
):
    """Two real OC20 systems (71 atoms); the measured peak is a real training step's, on each
    of ``gp`` spawned ranks, counted per tensor storage."""
    config = CONFIGS[family]()
    per_rank = gloo_world(gp).run(measure_contender, "ours", family, config, oc20_batch, repeats=0)
    measured = max(rank["memory"]["activations"] for rank in per_rank)
    graph = model_graph_size(family, build_contender("ours", family, config), oc20_batch)
    size = GraphSize(graph["atoms"], graph["edges"], graph["triplets"], graph.get("kmax", 1))
    estimate = activation_bytes(traces(family), widths_of(family, config), size, batch=1, gp=gp)
    print(
        f"{family} gp={gp}: estimate {estimate / 2**20:.2f} MiB, measured {measured / 2**20:.2f} MiB"
    )
    assert abs(estimate / measured - 1) < 0.20, (estimate, measured)


@pytest.mark.parametrize("gp", [1, 2])
@pytest.mark.parametrize("family", ["gemnet", "dimenet", "painn"])
def test_checkpointed_activation_estimate_within_20_percent_of_measured_peak(
    gloo_world, traces, oc20_batch, family, gp
):
    """As above with ``activation_checkpointing``: the planner traces the probe with
    checkpointing on, whatever the config says, and its estimate follows the model's own
    checkpointed step (whatever the model keeps and recomputes), not a fixed fraction of the
    un-checkpointed peak. GemNet-XL trains with direct forces, DimeNet++-XL with ``-dE/dpos``."""
    config = {**CONFIGS[family](), "activation_checkpointing": True}
    per_rank = gloo_world(gp).run(measure_contender, "ours", family, config, oc20_batch, repeats=0)
    measured = max(rank["memory"]["activations"] for rank in per_rank)
    graph = model_graph_size(family, build_contender("ours", family, config), oc20_batch)
    size = GraphSize(graph["atoms"], graph["edges"], graph["triplets"], graph.get("kmax", 1))
    widths = widths_of(family, config)
    estimate = activation_bytes(traces(family, True), widths, size, batch=1, gp=gp)
    plain = activation_bytes(traces(family), widths, size, batch=1, gp=gp)
    print(
        f"{family} gp={gp} checkpointed: estimate {estimate / 2**20:.2f} MiB, measured "
        f"{measured / 2**20:.2f} MiB (un-checkpointed estimate {plain / 2**20:.2f} MiB)"
    )
    assert abs(estimate / measured - 1) < 0.20, (estimate, measured)


def test_model_state_counts_adamw_amsgrad_and_ema():
    state = model_state(
        1000, {"optimizer": "AdamW", "optimizer_params": {"amsgrad": True}, "ema_decay": 0.999}
    )
    assert (state.parameters, state.gradients, state.optimizer, state.ema) == (
        4000,
        4000,
        12000,
        4000,
    )
    assert model_state(1000, {"optimizer": "AdamW"}).optimizer == 8000
    assert model_state(1000, {"optimizer": "AdamW"}).ema == 0


def test_plan_command_recommends_the_smallest_gp_size_that_fits(capsys):
    config = "configs/s2ef/gemnet_xl_demo.yml"
    args = [
        "plan",
        "--config",
        config,
        "--atoms",
        "80",
        "--edges",
        "3000",
        "--json",
        "--reserve",
        "0",
    ]
    assert main([*args, "--gpu-mem", "1000"]) == 0
    roomy = json.loads(capsys.readouterr().out)
    assert roomy["recommended_gp"] == 1 and {row["gp_size"] for row in roomy["rows"]} == {1}
    assert roomy["recommended"]["setting"] == "plain"
    model = build_contender("ours", "gemnet", demo_gemnet())
    assert roomy["parameters"] == sum(p.numel() for p in model.parameters())

    # below what the leanest setting needs on one GPU: a larger GP size must be recommended
    one_gpu = min(row["total"] for row in roomy["rows"]) / 2**30
    assert main([*args, "--gpu-mem", f"{one_gpu * 0.6:.6f}"]) == 0
    tight = json.loads(capsys.readouterr().out)
    for setting in SETTINGS:
        rows = [row for row in tight["rows"] if row["setting"] == setting.name]
        totals = [row["total"] for row in rows]
        assert totals == sorted(totals, reverse=True)
        fits = [row["fits"] for row in rows]
        assert fits == sorted(fits)  # once a setting fits, it fits at every larger P
    plain = [row for row in tight["rows"] if row["setting"] == "plain"]
    assert [row["fits"] for row in plain] == [False] * (len(plain) - 1) + [True]
    smallest = min(row["gp_size"] for row in tight["rows"] if row["fits"])
    assert tight["recommended_gp"] == tight["recommended"]["gp_size"] == smallest > 1


def row(gp: int, setting: str, fits: bool) -> PlanRow:
    spec = next(s for s in SETTINGS if s.name == setting)
    return PlanRow(gp, setting, spec.checkpointing, spec.sharded, gp, 0.0, 0.0, 0.0, fits)


def test_recommendation_takes_the_fewest_gpus_then_the_cheapest_setting():
    """Fewest GPUs per GP group first; at one GP size plain < sharded state (a few collectives
    per step) < checkpointing (recompute) < both."""
    names = [setting.name for setting in SETTINGS]
    assert names == ["plain", "sharded state", "checkpointing", "checkpointing + sharded state"]
    # only both options together fit on 1 GPU: that beats anything on 2
    rows = [row(1, name, name == names[3]) for name in names] + [row(2, n, True) for n in names]
    assert (recommend(rows).gp_size, recommend(rows).setting) == (1, names[3])
    for cheapest in range(4):  # at one GP size, the cheapest setting that fits
        rows = [row(4, name, index >= cheapest) for index, name in enumerate(names)]
        assert recommend(rows).setting == names[cheapest]
    assert recommend([row(1, "checkpointing", True), row(1, "sharded state", True)]).setting == (
        "sharded state"
    )
    assert recommend([row(8, name, False) for name in names]) is None


def test_sharding_splits_optimizer_state_and_ema_over_the_world():
    """ZeRO-1: parameters 4 B + gradients 4 B per parameter stay replicated; AdamW's moments
    (8 B), AMSGrad's maximum (4 B) and the EMA (4 B) are split over the world's ranks."""
    state = model_state(
        1000, {"optimizer": "AdamW", "optimizer_params": {"amsgrad": True}, "ema_decay": 0.999}
    )
    sharded = state.sharded(world=4)
    assert (sharded.parameters, sharded.gradients, sharded.optimizer, sharded.ema) == (
        4000,
        4000,
        3000,
        1000,
    )
    assert sharded.total / state.total == 0.5  # (8 + 16 / 4) / 24
    assert state.sharded(world=3).optimizer == 4000 and state.sharded(world=7).ema == 572
    assert state.sharded(world=1) == state
    # the trainer's own per-parameter accounting (ocp_graphpar.trainers.sharded_state)
    from ocp_graphpar.measure.model_state import bytes_per_parameter

    optim = {
        "optimizer": "AdamW",
        "optimizer_params": {"amsgrad": True},
        "ema_decay": 0.999,
        "shard_optimizer_state": True,
    }
    assert sharded.total == 1000 * bytes_per_parameter(optim=optim, world_size=4).total


def test_plan_shards_over_the_gp_group_or_the_given_world(capsys):
    args = [
        "plan",
        "--config",
        "configs/s2ef/gemnet_xl_demo.yml",
        "--atoms",
        "80",
        "--edges",
        "3000",
        "--json",
        "--reserve",
        "0",
        "--gpu-mem",
        "1e-6",
        "--max-gp",
        "4",
    ]
    for world, expected in (
        (None, {1: 1, 2: 2, 4: 4}),
        ("8", {1: 8, 2: 8, 4: 8}),
        ("2", {1: 2, 2: 2, 4: 4}),
    ):
        assert main(args + (["--world", world] if world else [])) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["recommended"] is None
        state = ModelStateBytes(**report["state_bytes"])
        for entry in report["rows"]:
            assert entry["world"] == expected[entry["gp_size"]]
            ranks = expected[entry["gp_size"]] if entry["shard_optimizer_state"] else 1
            assert entry["state"] == state.sharded(world=ranks).total
            assert entry["total"] == entry["state"] + entry["activations"]


def test_gemnet_xl_floor_plan_recommends_checkpointing_on_at_most_four_gpus(capsys):
    """GemNet-XL, 1000 atoms and 50,000 edges per structure on 32 GiB GPUs: at most four GPUs
    per GP group with the memory options (8 without them)."""
    args = [
        "plan",
        "--config",
        "configs/s2ef/gemnet_xl.yml",
        "--atoms",
        "1000",
        "--edges",
        "50000",
        "--gpu-mem",
        "32",
    ]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    best = report["recommended"]
    assert best["gp_size"] <= 4 and best["activation_checkpointing"]
    plain = [row for row in report["rows"] if row["setting"] == "plain"]
    assert plain[-1]["fits"] and plain[-1]["gp_size"] > best["gp_size"]
    assert main(args) == 0  # the same plan as text (the traces are reused)
    advice = capsys.readouterr().out.strip().splitlines()[-1]
    assert advice.startswith(f"recommended: --gp-gpus {best['gp_size']} with ")
    assert "model.activation_checkpointing: True" in advice
    assert f"--gp-gpus {best['gp_size']} --model.activation_checkpointing=True" in advice


def test_plan_command_names_a_missing_config(capsys):
    code = main(["plan", "--config", "no/such.yml", "--atoms", "10", "--edges", "100"])
    assert code == 2
    assert "config no/such.yml does not exist" in capsys.readouterr().err


def test_activation_formula_covers_both_phases_of_the_step(traces):
    """The step's peak can fall in the forward pass at one width and in the backward pass at
    another, so the trace keeps what was live at each phase's peak and takes the larger."""
    peak = traces("gemnet").activations
    assert len(peak.phases) == 2
    values = {**widths_of("gemnet", CONFIGS["gemnet"]()), "atoms": 71, "edges": 2330}
    values.update(triplets=80670, kmax=49)
    assert peak.evaluate(values) == max(phase.evaluate(values) for phase in peak.phases)


def test_config_beyond_the_paper_plans_onto_80_gib_and_runs_narrow(capsys, oc20_batch):
    """``configs/s2ef/gemnet_t_2.5B.yml``: ~2.57B parameters (the planner's parameter formula
    is exact, see above), planned onto 80 GiB GPUs for OC20-sized structures, and built and
    trained for one step at 1/32 of its widths (the full model is 10 GB of float32)."""
    config_path = "configs/s2ef/gemnet_t_2.5B.yml"
    args = ["plan", "--config", config_path, "--atoms", "80", "--edges", "3000", "--json"]
    assert main([*args, "--gpu-mem", "80"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 2.4e9 < report["parameters"] < 2.7e9
    assert report["rows"][-1]["fits"] and report["recommended_gp"] <= 2

    config = dict(load_config(str(REPO / config_path))[0]["model"])
    config.pop("name")
    narrow = {name: max(config[name] // 32, 2) for name in WIDTHS["gemnet"] if name in config}
    model = build_contender("ours", "gemnet", {**config, **narrow, **precomputed_graph("gemnet")})
    assert len(model.int_blocks) == 10
    outputs = training_step(model.train(), oc20_batch)
    assert torch.isfinite(outputs["forces"]).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# -- inference (`plan --inference`) --------------------------------------------------------

INFERENCE_CASES = {
    "gemnet": lambda: demo_gemnet(),  # direct forces, as GemNet-XL
    "gemnet_dE_dpos": lambda: {**demo_gemnet(), "direct_forces": False},  # as DimeNet++-XL
}


@pytest.fixture(scope="module")
def inference_traces():
    cache = {}

    def get(case: str):
        if case not in cache:
            cache[case] = trace_model(case.split("_")[0], INFERENCE_CASES[case](), inference=True)
        return cache[case]

    return get


@pytest.mark.parametrize("gp", [1, 2])
@pytest.mark.parametrize("case", list(INFERENCE_CASES))
def test_inference_estimate_within_20_percent_of_measured_peak(
    gloo_world, inference_traces, oc20_batch, case, gp
):
    """A prediction (eval mode, ``torch.no_grad()``) on two real OC20 systems, measured on
    each of ``gp`` spawned ranks, against the planner's inference trace; with ``-dE/dpos``
    forces the model records a graph for that pass, with a force head it records none."""
    family, config = case.split("_")[0], INFERENCE_CASES[case]()
    per_rank = gloo_world(gp).run(
        measure_contender, "ours", family, config, oc20_batch, repeats=0, inference=True
    )
    assert all(rank["memory"]["gradients"] == 0 for rank in per_rank)
    measured = max(rank["memory"]["activations"] for rank in per_rank)
    graph = model_graph_size(family, build_contender("ours", family, config), oc20_batch)
    size = GraphSize(graph["atoms"], graph["edges"], graph["triplets"], graph.get("kmax", 1))
    trace = inference_traces(case)
    estimate = activation_bytes(trace, widths_of(family, config), size, batch=1, gp=gp)
    print(
        f"{case} gp={gp} inference: estimate {estimate / 2**20:.2f} MiB, measured "
        f"{measured / 2**20:.2f} MiB"
    )
    assert len(trace.activations.phases) == 1  # one call, no loss or backward phase
    assert abs(estimate / measured - 1) < 0.20, (estimate, measured)


def test_inference_plan_holds_parameters_only_and_falls_with_p(capsys):
    config = "configs/s2ef/gemnet_xl_demo.yml"
    args = [
        "plan",
        "--inference",
        "--config",
        config,
        "--atoms",
        "2000",
        "--edges",
        "100000",
        "--reserve",
        "0",
        "--json",
    ]
    assert main([*args, "--gpu-mem", "1000"]) == 0
    roomy = json.loads(capsys.readouterr().out)
    model = build_contender("ours", "gemnet", demo_gemnet())
    parameters = sum(p.numel() for p in model.parameters())
    assert roomy["parameters"] == parameters and roomy["batch_size"] == 1
    # parameters only: no gradients, optimizer state or EMA (the training plan has them)
    assert roomy["parameter_bytes"] == 4 * parameters and "state_bytes" not in roomy
    assert roomy["recommended_gp"] == 1 and [r["gp_size"] for r in roomy["rows"]] == [1]
    # direct forces record no graph under no_grad: checkpointing changes nothing, one row per P
    assert roomy["forces"] == "direct" and not roomy["checkpointing_matters"]

    one_gpu = roomy["rows"][0]["total"] / 2**30
    assert main([*args, "--gpu-mem", f"{one_gpu * 0.3:.6f}"]) == 0
    tight = json.loads(capsys.readouterr().out)
    rows = tight["rows"]
    assert [r["gp_size"] for r in rows] == [1, 2, 4]
    for row in rows:
        assert row["parameters"] == 4 * parameters
        assert row["total"] == row["parameters"] + row["activations"]
        assert row["activations"] == pytest.approx(rows[0]["activations"] / row["gp_size"])
    assert [r["fits"] for r in rows] == [False, False, True] and tight["recommended_gp"] == 4

    assert main(args[:-1] + ["--gpu-mem", f"{one_gpu * 0.3:.6f}"]) == 0  # as text
    text = capsys.readouterr().out
    assert "| GP size | setting | parameters per GPU | activations per GPU |" in text
    assert "| 4 | plain (config) |" in text
    assert text.strip().endswith("smallest GP size that fits: 4 GPUs per structure, as configured.")


def test_inference_plan_shows_checkpointing_for_dE_dpos_forces(capsys, tmp_path):
    """With ``-dE/dpos`` forces a prediction records the forward's graph for one backward
    pass, so checkpointing lowers the estimate and the plan shows both settings."""
    config = tmp_path / "conservative.yml"
    config.write_text(
        f"includes:\n  - {REPO / 'configs/s2ef/gemnet_xl_demo.yml'}\n"
        "model:\n  direct_forces: False\n"
    )
    args = [
        "plan",
        "--inference",
        "--config",
        str(config),
        "--atoms",
        "2000",
        "--edges",
        "100000",
        "--reserve",
        "0",
        "--max-gp",
        "2",
    ]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["forces"] == "-dE/dpos" and report["checkpointing_matters"]
    plain, checkpointed = report["rows"][:2]
    assert not plain["activation_checkpointing"] and checkpointed["activation_checkpointing"]
    assert checkpointed["activations"] < 0.75 * plain["activations"]  # 3 blocks: about half
    assert main(["plan", "--inference", "--world", "8", *args[2:]]) == 2
    assert "--world applies to training plans" in capsys.readouterr().err
