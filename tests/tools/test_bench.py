"""``ocp-graphpar bench``: its memory counter, and one small suite end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import yaml
from helpers.gemnet_cases import TINY
from helpers.oc20 import require_oc20_mini

from ocp_graphpar.cli import main
from ocp_graphpar.measure.memory import LiveTensorBytes
from ocp_graphpar.tools.bench import records, runner
from ocp_graphpar.tools.bench.cli import JOURNAL_NAME
from ocp_graphpar.tools.bench.journal import Journal
from ocp_graphpar.tools.bench.limits import plan_checks, workload_checks
from ocp_graphpar.tools.bench.runner import Job

REPO = Path(__file__).resolve().parents[2]
#: The limits the shipped suite sets on GemNet-XL.
GEMNET_LIMITS = [
    {"measure": "bytes", "of": "ours@4", "over": "gp_gemnet_t@4", "at_most": 0.10},
    {"measure": "activations", "of": "ours@4", "over": "ours@1", "at_most": 0.40},
    {"measure": "flops", "of": "ours@1", "over": "gemnet_t@1", "at_most": 1.05},
    {"measure": "step_time", "of": "ours", "over": "gemnet_t", "at_most": 1.05},
    {"measure": "cpu_time", "of": "ours", "over": "gemnet_t", "at_most": 1.05},
]


def organised(out: Path) -> tuple[dict, list]:
    """The records a bench wrote into ``out``, by workload, and its plans."""
    document = json.loads((out / "benchmarks" / "results.json").read_text())
    return records.organise([records.from_json(record) for record in document["results"]])


def test_live_tensor_bytes_counts_storages_once_and_releases_them():
    weight = torch.ones(100, 100, requires_grad=True)  # a parameter: allocated before
    weight.grad = torch.zeros_like(weight)
    with LiveTensorBytes() as tracker:
        transposed = weight.t()  # views and in-place updates of prior storages are not new
        weight.grad.add_(transposed.detach())
        assert tracker.live == 0
        del transposed
        a = torch.ones(1000)  # 4000 bytes
        view = a[:10]  # shares a's storage
        b = a * 2  # 4000 more
        assert tracker.live == 8000
        del a
        assert tracker.live == 8000  # the view keeps the storage alive
        del view, b
        assert tracker.live == 0
        x = torch.ones(100, 100, requires_grad=True)
        y = x.exp().sum()  # exp's output is saved for backward
        y.backward()
    assert tracker.peak >= 8000 + 40000 + 40000  # x, exp(x) and x.grad together at the end


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory):
    mini = require_oc20_mini()
    folder = tmp_path_factory.mktemp("bench")
    model = {"name": "gemnet_xl", **TINY, "direct_forces": True}  # as the XL configs
    (folder / "tiny.yml").write_text(yaml.safe_dump({"model": model}))
    suite = {
        "sizes": [1, 2],
        "repeats": 1,
        "workloads": [
            {
                "name": "tiny",
                "description": "test widths",
                "config": str(folder / "tiny.yml"),
                "family": "gemnet",
                "systems": [str(mini / "random1000100.traj"), str(mini / "random1000120.traj")],
                "contenders": ["ours", "gp_gemnet_t", "gemnet_t"],
                "limits": GEMNET_LIMITS,
                "paired_timing": ["ours", "gemnet_t"],
                "paired_rounds": 1,
            }
        ],
    }
    (folder / "suite.yml").write_text(yaml.safe_dump(suite))
    out = folder / "docs"
    command = ["bench", "--suite", str(folder / "suite.yml"), "--out", str(out)]
    # Ctrl-C after three records, then a plain re-run, which must make only the rest.
    before, after = _made_jobs(command, interrupt_after=3), _made_jobs(command)
    return SimpleNamespace(out=out, before=before, after=after)


def _made_jobs(command: list[str], interrupt_after: int | None = None) -> list[str]:
    made, make = [], Job.make

    def counted(job, world, threads):
        if len(made) == interrupt_after:
            raise KeyboardInterrupt
        made.append(job.label)
        return make(job, world, threads)

    with mock.patch.object(Job, "make", counted):
        if interrupt_after is None:
            assert main(command) == 0
        else:
            with pytest.raises(KeyboardInterrupt):
                main(command)
    return made


def test_an_interrupted_bench_resumes_where_it_stopped(small_suite):
    assert len(small_suite.before) == 3
    assert not set(small_suite.before) & set(small_suite.after)  # nothing measured twice
    # model state, paired timing, 3 runs at P = 1, 2 at P = 2, the planner check
    assert len(small_suite.before) + len(small_suite.after) == 8
    assert not (small_suite.out / "benchmarks" / JOURNAL_NAME).exists()  # done: discarded


def test_journal_drops_a_torn_record_and_stale_definitions(tmp_path):
    path = tmp_path / "runs.jsonl"
    journal = Journal(path)
    journal.add(("run", "w", "ours", 2), "abc", {"kind": "run"})
    journal.add(("state", "w"), "abc", {"kind": "state"})
    with open(path, "a") as stream:
        stream.write('{"key": ["plan", 0], "finger')  # killed mid-write
    reopened = Journal(path)
    assert reopened.get(("run", "w", "ours", 2), "abc") == {"kind": "run"}
    assert reopened.get(("run", "w", "ours", 2), "changed") is None  # suite edited since
    reopened.add(("plan", 0), "abc", {"kind": "plan"})
    assert Journal(path).get(("plan", 0), "abc") == {"kind": "plan"}
    assert Journal(path, resume=False).get(("state", "w"), "abc") is None
    assert not path.exists()


def test_bench_writes_the_report_tables_and_plots(small_suite):
    markdown = (small_suite.out / "benchmarks.md").read_text()
    for label in ("ocp-graphpar", "upstream gp_gemnet_t", "upstream gemnet_t"):
        assert f"| {label} |" in markdown
    assert "AdamW + AMSGrad state" in markdown and "Triplet imbalance" in markdown
    for plot in ("bytes_vs_p", "memory_vs_p", "step_time_vs_p", "load_balance"):
        png = small_suite.out / "benchmarks" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"benchmarks/{plot}.png" in markdown


def test_bench_measures_what_the_design_promises(small_suite):
    entry = organised(small_suite.out)[0]["tiny"]
    runs = entry.runs
    assert set(runs) == {
        ("ours", 1),
        ("gp_gemnet_t", 1),
        ("gemnet_t", 1),
        ("ours", 2),
        ("gp_gemnet_t", 2),
    }
    assert runs["ours", 1].total("comm", "bytes") == 0
    assert (
        0 < runs["ours", 2].total("comm", "bytes") < runs["gp_gemnet_t", 2].total("comm", "bytes")
    )
    one, two = (runs["ours", p].max("memory", "activations") for p in (1, 2))
    assert two < 0.75 * one
    loads = [rank["load"] for rank in runs["ours", 2].per_rank]
    assert sum(load["atoms"] for load in loads) == entry.info.atoms == 71
    assert set(entry.paired.step_s) == {"ours", "gemnet_t"}
    assert len(entry.paired.ratio["cpu"]) == 1  # one timed round (paired_rounds)
    # at P = 1 ours does upstream's matrix products, no more (FLOPs are counted, not timed)
    flops = {c: runs[c, 1].total("flops") for c in ("ours", "gemnet_t", "gp_gemnet_t")}
    assert flops["ours"] == flops["gemnet_t"] > 0
    assert runs["ours", 2].total("flops") == pytest.approx(flops["ours"], rel=0.02)
    # sizes 1 and 2 decide the step-time limits only (the others are at P = 4)
    assert [check.what for check in workload_checks(entry)] == [
        "matmul FLOPs per step, ocp-graphpar at P=1 / upstream gemnet_t at P=1",
        "step time at P=1, ocp-graphpar / upstream gemnet_t (alternating processes)",
        "step CPU time at P=1, ocp-graphpar / upstream gemnet_t (alternating processes)",
    ]
    state = entry.state
    # AdamW's two moments and AMSGrad's maximum for every trained parameter (the scale
    # factors are parameters that are not trained)
    assert state.optimizer == 3 * state.gradients > 0.99 * 3 * state.parameters


def test_bench_report_only_rerenders_and_unknown_workloads_are_named(small_suite, capsys):
    (small_suite.out / "benchmarks.md").unlink()
    assert main(["bench", "--out", str(small_suite.out), "--report-only"]) == 0
    assert (small_suite.out / "benchmarks.md").exists()
    assert main(["bench", "--out", str(small_suite.out), "--only", "nope"]) == 2
    assert "no workload named ['nope']" in capsys.readouterr().err


def test_the_shipped_suite_names_real_configs_and_contenders():
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import load_config

    import ocp_graphpar  # noqa: F401  (registers the short model names)
    from ocp_graphpar.tools.bench.suite import load_suite

    suite = load_suite(REPO / "configs" / "bench" / "default.yml")
    assert suite.sizes == [1, 2, 4]
    limited = {w.name: w.limits for w in suite.workloads if w.limits}
    assert limited["gemnet_xl"] == GEMNET_LIMITS
    assert set(limited) == {"gemnet_xl", "inference_gemnet"} | {
        w.name for w in suite.workloads if w.memory
    }
    for workload in suite.workloads:
        name = load_config(str(REPO / workload.config))[0]["model"]["name"]
        model = registry.get_model_class(name).__name__
        families = {"GemNetXL": "gemnet", "DimeNetPPXL": "dimenet", "PaiNNXL": "painn"}
        assert families[model] == workload.family
        assert set(workload.paired_timing) <= set(workload.contenders)
        # OC20 frames, or the recipe of a built slab (inference workloads)
        assert all(
            isinstance(s, dict) or s.startswith("../shared/data/oc20_mini/")
            for s in workload.systems
        )


MEMORY_LIMITS = [
    {"measure": "activations", "of": "ours_ck@1", "over": "gemnet_t@1", "at_most": 0.35},
    {"measure": "sharded_state", "world": 4, "at_most": 0.55},
]


@pytest.fixture(scope="module")
def memory_suite(tmp_path_factory):
    """The memory path at test widths: upstream, ours and ours with activation
    checkpointing at P = 1, the latter at P = 4 too, model state unsharded and sharded (the
    trainer's partition in one process, and measured on 4 spawned ranks), the checkpointing
    step-time cost and the GemNet-XL plan a limit is set on."""
    mini = require_oc20_mini()
    folder = tmp_path_factory.mktemp("memory")
    model = {"name": "gemnet_xl", **TINY, "direct_forces": True}
    (folder / "tiny.yml").write_text(yaml.safe_dump({"model": model}))
    suite = {
        "sizes": [1, 4],
        "workloads": [
            {
                "name": "memory_tiny",
                "description": "test widths",
                "config": str(folder / "tiny.yml"),
                "family": "gemnet",
                "systems": [str(mini / "random1000100.traj"), str(mini / "random1000120.traj")],
                "contenders": ["gemnet_t", "ours", "ours_ck"],
                "contender_sizes": {"ours": [1]},
                "repeats": 0,
                "paired_timing": ["ours", "ours_ck"],
                "paired_rounds": 1,
                "memory": {"world": 4, "spawned": True},
                "limits": MEMORY_LIMITS,
            }
        ],
        "plans": [
            {
                "config": str(REPO / "configs/s2ef/gemnet_xl.yml"),
                "atoms": 1000,
                "edges": 50000,
                "gpu_mem_gib": 32,
                "at_most": {"gpus_per_group": 4},
            }
        ],
    }
    (folder / "suite.yml").write_text(yaml.safe_dump(suite))
    out = folder / "docs"
    assert main(["bench", "--suite", str(folder / "suite.yml"), "--out", str(out)]) == 0
    return SimpleNamespace(out=out, workloads=organised(out)[0], plans=organised(out)[1])


def test_memory_workload_measures_checkpointing_at_every_p(memory_suite):
    entry = memory_suite.workloads["memory_tiny"]
    runs = entry.runs
    assert set(runs) == {("gemnet_t", 1), ("ours", 1), ("ours_ck", 1), ("ours_ck", 4)}
    assert all(rank["step_s"] is None for run in runs.values() for rank in run.per_rank)
    peak = {key: run.max("memory", "activations") for key, run in runs.items()}
    assert peak["ours_ck", 1] < 0.8 * peak["ours", 1]
    assert peak["ours_ck", 4] < 0.5 * peak["ours_ck", 1]  # split over the ranks
    # the planner's checkpointed estimate, beside the measured checkpointed peaks
    assert set(entry.plan_check.estimates_ck) == {"1", "4"}
    assert entry.plan_check.estimates_ck["1"] == pytest.approx(peak["ours_ck", 1], rel=0.2)
    assert set(entry.paired.step_s) == {"ours", "ours_ck"}


def test_memory_workload_measures_sharded_state(memory_suite):
    """Sharding splits the optimizer state and EMA by whole tensors: the spawned ranks'
    shares add up to the unsharded state and equal the trainer's partition computed in one
    process; parameters and gradients stay whole on every rank."""
    entry = memory_suite.workloads["memory_tiny"]
    split, ranks = entry.state_split, entry.state_world.per_rank
    unsharded = split.unsharded
    assert split.world == len(ranks) == 4 and unsharded["optimizer"] > 0
    for rank, share in zip(ranks, split.sharded):
        assert rank["unsharded"] == unsharded
        assert rank["sharded"] == share
        assert (share["parameters"], share["gradients"]) == (
            unsharded["parameters"],
            unsharded["gradients"],
        )
    for part in ("optimizer", "ema"):
        assert sum(share[part] for share in split.sharded) == unsharded[part]


def test_memory_report_has_the_limits_tables_and_plot(memory_suite):
    markdown = (memory_suite.out / "benchmarks.md").read_text()
    section = markdown[markdown.index("## Memory") :]
    assert "| Limit | Measured | At most | Holds |" in section
    assert "| ocp-graphpar, activation checkpointing | 4 |" in section
    assert "n/a (upstream)" in section and "measured on each of 4 spawned gloo ranks" in section
    assert "### What checkpointing costs in step time" in section
    png = memory_suite.out / "benchmarks" / "memory_ck_vs_p.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "memory_ck_vs_p.png" in markdown
    (plan,) = memory_suite.plans
    checks = workload_checks(memory_suite.workloads["memory_tiny"]) + plan_checks(plan)
    assert len(checks) == 4
    (peak, peak_ratio, _), *state, (what, gpus, at_most) = checks
    assert peak.startswith(
        "activation peak per rank, ocp-graphpar, activation checkpointing at P=1"
    )
    assert peak.endswith("/ upstream gemnet_t at P=1")
    assert 0 < peak_ratio < 1  # (the 0.35 limit is for the suite's widths, not these)
    assert all(0.5 <= check.value <= 0.55 and check.holds for check in state)  # (8 + 16 / 4) / 24
    assert "gemnet_xl.yml, 1000 atoms, 50000 edges, 32 GiB" in what
    assert gpus == plan.plan["recommended_gp"] <= 2 and at_most == 4 and checks[-1].holds


def test_the_shipped_suite_has_memory_workloads():
    """Upstream, ours and ours checkpointed at P = 1, checkpointed also at P = 2 and 4, one
    counted step per run; GemNet at reduced widths (both force modes) and at XL widths,
    DimeNet++-XL; each with tiny widths for `--tiny`, and the plan a limit is set on."""
    from ocp_graphpar.tools.bench.suite import load_suite

    suite = load_suite(REPO / "configs" / "bench" / "default.yml")
    memory = {w.name: w for w in suite.workloads if w.memory}
    assert set(memory) == {
        "memory_gemnet",
        "memory_gemnet_conservative",
        "memory_gemnet_xl",
        "memory_dimenetpp",
    }
    upstream = {"gemnet": "gemnet_t", "dimenet": "dimenetplusplus"}
    for workload in memory.values():
        assert workload.contenders == [upstream[workload.family], "ours", "ours_ck"]
        assert [workload.runs_at(p) for p in (1, 2, 4)] == [
            workload.contenders,
            ["ours_ck"],
            ["ours_ck"],
        ]
        assert workload.repeats == 0 and workload.memory["world"] == 4 and workload.tiny_overrides
    issue = memory["memory_gemnet"].model_config()
    assert (
        issue["emb_size_atom"],
        issue["emb_size_edge"],
        issue["emb_size_trip"],
        issue["emb_size_bil_trip"],
        issue["num_blocks"],
    ) == (64, 512, 128, 64, 6)
    assert memory["memory_gemnet_conservative"].model_config()["direct_forces"] is False
    assert memory["memory_gemnet_xl"].model_config()["emb_size_edge"] == 1536
    assert memory["memory_gemnet"].paired_timing == ["ours", "ours_ck"]
    assert {
        "config": "configs/s2ef/gemnet_xl.yml",
        "atoms": 1000,
        "edges": 50000,
        "gpu_mem_gib": 32,
        "at_most": {"gpus_per_group": 4},
    } in suite.plans


def test_a_run_whose_rank_dies_is_reported_and_the_suite_goes_on(monkeypatch):
    """A rank killed mid-run (the out-of-memory killer, say) fails that run only: the next job
    gets a fresh world, and the report names the run and how its rank ended."""
    import os

    from ocp_graphpar.tools.bench.report import render_markdown

    def job(key, fn, args, record):
        return Job(2, key, "f", " ".join(map(str, key)), fn, args, record)

    info = records.WorkloadInfo("tiny", "d", "c", "gemnet", [], atoms=1, edges=0)
    dies = job(("run", "tiny", "ours", 2), os._exit, (3,), None)
    answers = job(("probe", "tiny"), os.getpid, (), lambda pids, threads: probe(pids, threads))
    monkeypatch.setattr(runner, "make_jobs", lambda *_: [dies, answers])
    failed, after = runner.run_suite(bench_suite(sizes=[2]))
    assert isinstance(failed, records.Failed)
    assert failed.contender == "ours" and failed.size == 2
    assert "exited with code 3" in failed.reason
    assert len({rank["pid"] for rank in after.per_rank}) == 2  # a fresh world of two ranks
    markdown = render_markdown([info, failed], {"command": "c", "machine": "m"}, {})
    assert "* ocp-graphpar at P = 2: rank" in markdown


def probe(pids: list[int], threads: int) -> records.Run:
    return records.Run("tiny", "ours", 2, threads, [{"pid": pid} for pid in pids])


def runs_out_of_memory() -> None:
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_run_that_raises_is_reported_and_the_suite_goes_on(monkeypatch):
    fails = Job(1, ("run", "tiny", "gemnet_t", 1), "f", "fails", runs_out_of_memory, (), None)
    monkeypatch.setattr(runner, "make_jobs", lambda *_: [fails])
    (failed,) = runner.run_suite(bench_suite(sizes=[1]))
    assert failed.reason == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def bench_suite(*, sizes: list[int]):
    from ocp_graphpar.tools.bench.suite import Suite

    return Suite([], sizes, repeats=1)


SLAB = {"slab": "Cu", "size": [3, 3, 3], "a": 3.6, "vacuum": 8.0, "adsorbate": "CO"}


@pytest.fixture(scope="module")
def inference_suite(tmp_path_factory):
    """An inference workload at test widths on a small built slab: ours at P = 1 and 2,
    upstream at P = 1, one counted and one timed prediction each."""
    folder = tmp_path_factory.mktemp("inference")
    model = {"name": "gemnet_xl", **TINY, "direct_forces": True}
    (folder / "tiny.yml").write_text(yaml.safe_dump({"model": model}))
    suite = {
        "sizes": [1, 2],
        "repeats": 1,
        "workloads": [
            {
                "name": "inference_tiny",
                "description": "test widths",
                "config": str(folder / "tiny.yml"),
                "family": "gemnet",
                "inference": True,
                "limits": [
                    {"measure": "activations", "of": "ours@2", "over": "ours@1", "at_most": 0.6}
                ],
                "systems": [SLAB],
                "contenders": ["ours", "gemnet_t"],
            }
        ],
    }
    (folder / "suite.yml").write_text(yaml.safe_dump(suite))
    out = folder / "docs"
    assert main(["bench", "--suite", str(folder / "suite.yml"), "--out", str(out)]) == 0
    return SimpleNamespace(out=out, workloads=organised(out)[0])


def test_inference_workload_measures_predictions_at_every_p(inference_suite):
    entry = inference_suite.workloads["inference_tiny"]
    info, runs = entry.info, entry.runs
    assert info.inference and info.atoms == 3 * 3 * 3 + 2 and entry.state is None
    assert set(runs) == {("ours", 1), ("gemnet_t", 1), ("ours", 2)}
    for run in runs.values():
        assert len(run.per_rank) == run.size
        for rank in run.per_rank:
            memory = rank["memory"]
            assert memory["gradients"] == 0 < memory["parameters"]  # no gradients held
            assert memory["activations"] > 0 and rank["step_s"] > 0 and rank["cpu_s"] > 0
    peak = {key: run.max("memory", "activations") for key, run in runs.items()}
    assert peak["ours", 2] < peak["ours", 1]
    assert runs["ours", 1].total("comm", "bytes") == 0 < runs["ours", 2].total("comm", "bytes")
    # the planner's inference estimate beside the measured peaks, and at the config's widths
    assert set(entry.plan_check.estimates) == {"1", "2"}
    assert entry.plan_check.estimates["1"] == pytest.approx(peak["ours", 1], rel=0.2)
    assert entry.plan_check.config_widths["widths"]["emb_size_edge"] == TINY["emb_size_edge"]


def test_inference_report_has_the_limits_and_the_runs(inference_suite):
    markdown = (inference_suite.out / "benchmarks.md").read_text()
    section = markdown[markdown.index("## inference_tiny") :]
    assert "Cu fcc(111) slab of 3x3x3 cells" in section
    assert "| activation peak per rank, ocp-graphpar at P=2 / ocp-graphpar at P=1 |" in section
    assert "| ocp-graphpar | 2 |" in section and "| upstream gemnet_t | 1 |" in section
    assert "memory_vs_p.png" not in markdown  # inference workloads have no training plots
    ((what, ratio, at_most),) = workload_checks(inference_suite.workloads["inference_tiny"])
    assert at_most == 0.6 and 0 < ratio < 1


def test_the_shipped_inference_workload_predicts_a_slab_of_2000_atoms():
    from ocp_graphpar.tools.bench.suite import load_suite
    from ocp_graphpar.tools.bench.systems import slab_structure

    suite = load_suite(REPO / "configs" / "bench" / "default.yml")
    (workload,) = [w for w in suite.workloads if w.inference]
    assert workload.contenders == ["ours", "gemnet_t"] and suite.sizes == [1, 2, 4]
    (system,) = workload.systems
    atoms = slab_structure(**system)
    assert len(atoms) >= 2000 and atoms.pbc[:2].all()  # periodic along the surface
    assert set(atoms.get_chemical_symbols()) == {"Cu", "C", "O"}
    assert min(atoms.positions[-2:, 2]) > atoms.positions[:-2, 2].max()  # on top of the slab
