"""The main job, ``make demo`` / ``ocp-graphpar demo``: from data to leaderboard files, resumable.

See :mod:`ocp_graphpar.tools.demo.pipeline` for the stages and how re-runs resume. Importing this
package is cheap; torch and fairchem are imported when a stage needs them.
"""

from __future__ import annotations

from ocp_graphpar.tools.demo.options import DemoOptions, DemoPaths, command_line
from ocp_graphpar.tools.demo.pipeline import STAGES, run_demo

__all__ = ["STAGES", "DemoOptions", "DemoPaths", "command_line", "run_demo"]
