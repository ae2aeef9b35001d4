"""``ocp-graphpar bench``: run a benchmark suite and write its report and plots.

The report is ``<out>/<report>.md``, with its records (``results.json``) and plots in
``<out>/<report>/``; ``<report>`` is the suite's ``report:`` name (``benchmarks`` by default,
``benchmarks_gpu`` for ``configs/bench/gpu.yml``).
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
from ocp_graphpar.tools.bench import records as rec
from ocp_graphpar.tools.bench.journal import Journal
from ocp_graphpar.tools.bench.limits import named_checks, plan_checks
from ocp_graphpar.tools.bench.plots import plot_all
from ocp_graphpar.tools.bench.report import render_markdown
from ocp_graphpar.tools.bench.runner import run_suite
from ocp_graphpar.tools.bench.suite import load_suite

JOURNAL_NAME = "finished_runs.jsonl"  # runs of an unfinished `bench`, reused when it re-runs


def run_bench(args: argparse.Namespace) -> int:
    """Handler of ``bench``: measure (unless ``--report-only``), then render. Exit status 1
    when a run did not finish."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    suite = load_suite(args.suite) if Path(args.suite).is_file() or not args.report_only else None
    folder = args.out / (suite.report if suite else "benchmarks")
    results_path = folder / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else None
    if args.report_only:
        if previous is None:
            raise UserFacingError(f"{results_path} does not exist; run `ocp-graphpar bench` first")
        document = previous
    else:
        workload_order = [w.name for w in suite.workloads]
        suite = suite.select(args.only)
        suite = suite.at_tiny_widths() if args.tiny else suite
        suite = suite.on_device(args.device) if args.device else suite
        for device in {w.device for w in suite.workloads if w.device}:
            check_device(device)
        journal = Journal(folder / JOURNAL_NAME, resume=not args.restart)
        records = [rec.to_json(record) for record in run_suite(suite, journal)]
        document = {"environment": _environment(args, suite), "results": records}
        if args.only and previous is not None:  # keep the workloads not re-run, in order
            rerun = {record["workload"] for record in records}  # plans: workload ""
            kept = [r for r in previous["results"] if r["workload"] not in rerun]
            order = {name: index for index, name in enumerate(workload_order)}
            merged = sorted(kept + records, key=lambda r: order.get(r["workload"], len(order)))
            document = {"environment": previous["environment"], "results": merged}
        write_atomic(results_path, json.dumps(document, indent=1))
        if not args.only:  # a partial run leaves the other workloads' finished runs
            journal.discard()
    records = [rec.from_json(record) for record in document["results"]]
    plots = plot_all(records, folder)
    markdown_path = folder.with_suffix(".md")
    write_atomic(markdown_path, render_markdown(records, document["environment"], plots))
    print(f"wrote {markdown_path}, {results_path} and {len(plots)} plots")
    return _summary(records)


def _summary(records: list[rec.Record]) -> int:
    """Print each limit and each run that did not finish; 1 if one did not."""
    workloads, plans = rec.organise(records)
    checks = [check for results in workloads.values() for check in named_checks(results)]
    checks += [check for plan in plans for check in plan_checks(plan)]
    for check in checks:
        verdict = "ok" if check.holds else "MISSED"
        print(f"  {check.what} = {check.value:.3g} (at most {check.at_most:g}) {verdict}")
    failed = [record for record in records if isinstance(record, rec.Failed)]
    for record in failed:
        what = f"{record.contender} at P = {record.size}" if record.contender else record.of
        print(f"  {record.workload} {what} did not finish: {record.reason}")
    return 1 if failed else 0


def check_device(device: str) -> None:
    """The reason ``device`` cannot run here, if it cannot."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise UserFacingError(f"device {device!r}: {error}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserFacingError(
            f"the suite runs on {device!r} but torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda = {torch.version.cuda}); install a CUDA build "
            "(`make setup CUDA=cu128`) or pass --device cpu"
        )


def _environment(args: argparse.Namespace, suite) -> dict:
    import torch

    command = ["ocp-graphpar", "bench", "--suite", str(args.suite)]
    for flag, value in (("--device", args.device), ("--only", args.only)):
        if value:
            command += [flag, *([value] if isinstance(value, str) else value)]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}"
    )
    devices = {w.device for w in suite.workloads if w.device}
    if any(device.startswith("cuda") for device in devices):
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        machine += (
            f", CUDA {torch.version.cuda}, {properties.name} ({properties.total_memory / 2**30:.0f}"
            f" GiB), float32 matmul precision `{torch.get_float32_matmul_precision()}`"
        )
    elif not devices:
        machine += ", gloo ranks on CPU"
    return {
        "command": shlex.join(command + (["--tiny"] if args.tiny else [])),
        "machine": machine,
        "argv": shlex.join(sys.argv),
    }


def add_bench_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure traffic, memory, load and step time against upstream; write the report",
        description=__doc__,
    )
    parser.add_argument("--suite", type=Path, default=Path("configs/bench/default.yml"))
    parser.add_argument("--out", type=Path, default=Path("docs"), help="report folder")
    parser.add_argument(
        "--only", nargs="+", metavar="WORKLOAD", help="re-run these workloads (`plans`: the plans)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="re-render from the saved results"
    )
    parser.add_argument(
        "--device",
        help="run every workload on this device, each contender alone at P = 1 (e.g. cpu, to "
        "rehearse configs/bench/gpu.yml without a GPU)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="apply each workload's tiny_overrides (small widths) and the suite's tiny settings",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="measure everything again, ignoring the runs an interrupted bench finished",
    )
    parser.set_defaults(handler=run_bench)
