"""The ``ocp-graphpar`` console script: one sub-command group per tool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.tools.bench.cli import add_bench_commands
from ocp_graphpar.tools.data.cli import add_data_commands
from ocp_graphpar.tools.demo.cli import add_demo_commands
from ocp_graphpar.tools.export.cli import add_export_commands
from ocp_graphpar.tools.plan.cli import add_plan_commands
from ocp_graphpar.tools.simulate.cli import add_simulate_commands


def package_version() -> str:
    """The installed distribution's version, else the package's ``__version__`` (a source tree)."""
    try:
        return metadata.version("ocp-graphpar")
    except metadata.PackageNotFoundError:
        from ocp_graphpar import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocp-graphpar",
        description="Graph-parallel GemNet-XL / DimeNet++-XL for fairchem: data, tools, reports.",
    )
    parser.add_argument("--version", action="version", version=f"ocp-graphpar {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_commands(commands)
    add_data_commands(commands)
    add_export_commands(commands)
    add_bench_commands(commands)
    add_plan_commands(commands)
    add_simulate_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; each registers its handler as ``args.handler``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserFacingError as error:
        print(f"ocp-graphpar: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
