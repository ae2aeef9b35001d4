"""``ocp-graphpar bench``: run the benchmark suite and write ``docs/benchmarks.md`` and plots."""

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
from ocp_graphpar.tools.bench.journal import Journal
from ocp_graphpar.tools.bench.report import floors, organise, plot_all, render_markdown
from ocp_graphpar.tools.bench.suite import load_suite, run_suite

JOURNAL_NAME = "finished_runs.jsonl"  # runs of an unfinished `bench`, reused when it re-runs


def run_bench(args: argparse.Namespace) -> int:
    """Handler of ``bench``: measure (unless ``--report-only``), then render."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results_path = args.out / "benchmarks" / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else None
    if args.report_only:
        if previous is None:
            from ocp_graphpar.errors import UserFacingError

            raise UserFacingError(f"{results_path} does not exist; run `ocp-graphpar bench` first")
        document = previous
    else:
        suite = load_suite(args.suite).select(args.only)
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
    for name, entry in organise(document["results"]).items():
        for what, value, floor, holds in floors(entry) if entry["info"].get("floors") else []:
            print(f"  {name}: {what} = {value:.3f} (floor {floor}) {'ok' if holds else 'MISSED'}")
    return 0


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
        "--restart",
        action="store_true",
        help="measure everything again, ignoring the runs an interrupted bench finished",
    )
    parser.set_defaults(handler=run_bench)
