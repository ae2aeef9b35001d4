"""Install the start-up hook that lets the plugin reach the ``fairchem`` CLI's launch path.

``python -m ocp_graphpar.launch.startup_hook`` (run by ``make setup``) writes
``ocp_graphpar-fairchem.pth`` into this environment's site-packages. Python runs its one line
at every start-up; it costs a string comparison, and only in a ``fairchem`` process (or with
``OCP_GRAPHPAR_CLI_HOOKS=1``) does it import the plugin and call ``install_cli_hooks``.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PTH_NAME = "ocp_graphpar-fairchem.pth"
# One line: a .pth runs lines that start with "import". Kept free of plugin imports, so other
# programs pay nothing.
PTH_LINE = (
    "import os, sys; "
    '(os.path.basename((getattr(sys, "argv", None) or [""])[0]) == "fairchem" '
    'or os.environ.get("OCP_GRAPHPAR_CLI_HOOKS") == "1") '
    'and __import__("ocp_graphpar.launch.cli_hooks", fromlist=["cli_hooks"]).install_cli_hooks()\n'
)


def hook_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def install() -> Path:
    """Write (or refresh) the ``.pth`` file; returns its path."""
    path = hook_path()
    if not path.exists() or path.read_text() != PTH_LINE:
        path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    print(f"setup: fairchem CLI hook at {install()}")
    sys.exit(0)
