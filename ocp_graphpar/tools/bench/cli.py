"""``ocp-graphpar bench``: run the benchmark suite and write ``docs/benchmarks.md`` and plots.

A suite with a ``device:`` key (``configs/bench/gpu.yml``) is a device suite instead: each
contender at P = 1 on that device and the graph-parallel check on it, written to
``docs/benchmarks_gpu.md`` (``benchmarks_<device>.md`` off CUDA) and its ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path

from ocp_graphpar.atomic import write_atomic
from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.bench.inference import inference_floors
from ocp_graphpar.tools.bench.journal import Journal
from ocp_graphpar.tools.bench.memory_report import memory_floors
from ocp_graphpar.tools.bench.report import floors, organise, plot_all, render_markdown
from ocp_graphpar.tools.bench.suite import load_suite, run_suite

JOURNAL_NAME = "finished_runs.jsonl"  # runs of an unfinished `bench`, reused when it re-runs


def run_bench(args: argparse.Namespace) -> int:
    """Handler of ``bench``: measure (unless ``--report-only``), then render."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    suite = load_suite(args.suite) if Path(args.suite).is_file() else None
    if args.device or (suite is not None and suite.device):
        return run_device_bench(args, load_suite(args.suite) if suite is None else suite)
    if args.stage:
        raise UserFacingError("--stage applies to device suites (e.g. configs/bench/gpu.yml)")
    results_path = args.out / "benchmarks" / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else None
    if args.report_only:
        if previous is None:
            raise UserFacingError(f"{results_path} does not exist; run `ocp-graphpar bench` first")
        document = previous
    else:
        suite = load_suite(args.suite).select(args.only)
        suite = suite.at_tiny_widths() if args.tiny else suite
        journal = Journal(args.out / "benchmarks" / JOURNAL_NAME, resume=not args.restart)
        results = run_suite(suite, journal)
        document = _merge(previous, results, args) if args.only else _document(results, args)
        write_atomic(results_path, json.dumps(document, indent=1))
        if not args.only:  # a partial run leaves the other workloads' finished runs
            journal.discard()
    plots = plot_all(document["results"], args.out / "benchmarks")
    markdown = render_markdown(document["results"], document["environment"], plots)
    write_atomic(args.out / "benchmarks.md", markdown)
    print(f"wrote {args.out / 'benchmarks.md'}, {results_path} and {len(plots)} plots")
    table = organise(document["results"])
    for name, entry in table.items():
        checks = floors(entry) if entry["info"].get("floors") else []
        checks += inference_floors(entry) if entry["info"].get("inference") else []
        for what, value, floor, holds in checks:
            print(f"  {name}: {what} = {value:.3f} (floor {floor}) {'ok' if holds else 'MISSED'}")
    plans = [record for record in document["results"] if record["kind"] == "plan"]
    for what, value, floor, holds in memory_floors(table, plans):  # issue #19
        print(f"  {what} = {value:.3g} (floor {floor}) {'ok' if holds else 'MISSED'}")
    return 0


def run_device_bench(args: argparse.Namespace, suite) -> int:
    """Handler of ``bench`` for a device suite; exit status 1 when a graph-parallel check
    fails or a run does not finish."""
    import torch

    from ocp_graphpar.tools.bench.device_report import render_device_markdown, report_name
    from ocp_graphpar.tools.bench.device_suite import (
        check_device,
        device_environment,
        run_device_suite,
    )

    device = args.device or suite.device
    name = report_name(device)
    results_path = args.out / f"{name}.json"
    if args.report_only:
        if not results_path.exists():
            raise UserFacingError(f"{results_path} does not exist; run the suite first")
        document = json.loads(results_path.read_text())
    else:
        check_device(device)
        chosen = suite.select(args.only)
        chosen = chosen.at_tiny_widths() if args.tiny else chosen
        results = run_device_suite(chosen, device=device, force_staging=_staged_names(args))
        if args.only and results_path.exists():  # keep the other workloads' records
            rerun = {record["workload"] for record in results}
            previous = json.loads(results_path.read_text())["results"]
            results = [r for r in previous if r["workload"] not in rerun] + results
        document = {
            "environment": device_environment(torch.device(device), _command(args)),
            "results": results,
        }
        write_atomic(results_path, json.dumps(document, indent=1))
    write_atomic(
        args.out / f"{name}.md",
        render_device_markdown(document["results"], document["environment"]),
    )
    print(f"wrote {args.out / (name + '.md')} and {results_path}")
    checks = [r for r in document["results"] if r["kind"] == "gp_check"]
    for check in checks:
        errors = check["per_rank"][0]["errors"]
        worst = max(errors["energy"], errors["forces"], errors["gradients"])
        print(
            f"  gp check {check['workload']} at P={check['size']}: largest relative error "
            f"{worst:.1e} (tolerance {check['tolerance']:.0e}) "
            f"{'ok' if check['passed'] else 'FAILED'}"
        )
    failed = [r for r in document["results"] if r["kind"] == "failed"]
    for record in failed:
        print(
            f"  {record['workload']} {record.get('contender') or record.get('check')} did not "
            f"finish: {record['reason']}"
        )
    return 0 if all(check["passed"] for check in checks) and not failed else 1


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this device run."""
    parts = ["ocp-graphpar", "bench", "--suite", str(args.suite)]
    for flag, value in (("--device", args.device), ("--only", args.only), ("--stage", args.stage)):
        if value:
            parts += [flag, *([value] if isinstance(value, str) else value)]
    return shlex.join(parts + (["--tiny"] if args.tiny else []))


def _staged_names(args: argparse.Namespace) -> tuple[str, ...]:
    from ocp_graphpar.tools.bench.staging import COLLECTIVES

    names = args.stage or []
    return COLLECTIVES if "all" in names else tuple(names)


def _environment(args: argparse.Namespace) -> dict:
    import torch

    command = "ocp-graphpar bench" + (f" --suite {args.suite}" if args.suite else "")
    return {
        "command": command,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, gloo ranks on CPU",
        "argv": shlex.join(sys.argv),
    }


def _document(results: list[dict], args: argparse.Namespace) -> dict:
    return {"environment": _environment(args), "results": results}


def _merge(previous: dict | None, results: list[dict], args: argparse.Namespace) -> dict:
    """Replace the re-run workloads' records and keep the others."""
    if previous is None:
        return _document(results, args)
    rerun = {record["workload"] for record in results}  # plans: workload ""
    kept = [record for record in previous["results"] if record["workload"] not in rerun]
    return {"environment": previous["environment"], "results": kept + results}


def add_bench_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure traffic, memory, load and step time against upstream; write the report",
        description=__doc__,
    )
    parser.add_argument("--suite", type=Path, default=Path("configs/bench/default.yml"))
    parser.add_argument("--out", type=Path, default=Path("docs"), help="report folder")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="WORKLOAD",
        help="re-run these workloads (`plans`: the memory plans)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="re-render from the saved results"
    )
    parser.add_argument(
        "--device",
        help="device of a device suite (default: the suite's `device:`; e.g. cpu to run "
        "configs/bench/gpu.yml without a GPU)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="apply each workload's tiny_overrides (small widths) and the suite's tiny timing",
    )
    parser.add_argument(
        "--stage",
        nargs="+",
        metavar="COLLECTIVE",
        help="device suites: stage these torch.distributed collectives (or `all`) through host "
        "memory in the graph-parallel check even where gloo accepts the device's tensors",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="measure everything again, ignoring the runs an interrupted bench finished",
    )
    parser.set_defaults(handler=run_bench)
