"""What a demo run is asked to do (:class:`DemoOptions`) and where it puts things (:class:`DemoPaths`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from pathlib import Path

from ocp_graphpar.tools.data.demo import DEFAULT_FRAMES, DEFAULT_SYSTEMS
from ocp_graphpar.tools.demo.launcher import REPO

S2EF_CONFIG = REPO / "configs" / "s2ef" / "gemnet_xl_demo.yml"
IS2RS_CONFIG = REPO / "configs" / "is2rs" / "gemnet_xl_demo.yml"
#: fairchem's run folders get this fixed timestamp id, so a resumed run writes into the same
#: ``checkpoints/``, ``results/`` and ``logs/`` folders as the run it continues.
TIMESTAMP_ID = "demo"
RANKS = 2
GP_RANKS = 2


@dataclass(frozen=True)
class DemoOptions:
    """Options of one demo run; the defaults are ``make demo``'s.

    ``data`` empty means the embedded EMT demo set (``systems`` systems: relaxations of at most
    ``emt_steps`` BFGS steps, ``md_frames`` MD and ``rattled_frames`` rattled frames each);
    otherwise ASE trajectory files or folders of ``*.traj``, one
    relaxation each, thinned to every ``frame_stride``-th frame (``None``: the smallest stride
    that keeps one epoch within ``steps``) and limited to systems of at most ``max_atoms`` atoms
    (``None``: all). Training takes about ``steps`` optimizer steps (whole epochs, as fairchem
    1.10 counts them) with about ``evaluations`` validations; IS2RS relaxations take
    ``relaxation_steps`` LBFGS steps.
    """

    out: Path
    data: tuple[Path, ...] = ()
    restart: bool = False
    systems: int = DEFAULT_SYSTEMS
    emt_steps: int = 100
    md_frames: int = DEFAULT_FRAMES.md
    rattled_frames: int = DEFAULT_FRAMES.rattled
    val_fraction: float = 0.25
    seed: int = 0
    frame_stride: int | None = None
    max_atoms: int | None = 80
    steps: int = 700
    evaluations: int = 4
    relaxation_steps: int = 100
    measure_systems: int = 2


#: Options that are not command-line flags of ``ocp-graphpar demo``.
_NOT_FLAGS = ("out", "data", "restart", "measure_systems")


def command_line(options: DemoOptions) -> str:
    """The ``ocp-graphpar demo`` command with these options (``--restart`` left out): what
    continues an interrupted run."""
    parts = ["ocp-graphpar", "demo", "--out", str(options.out)]
    if options.data:
        parts += ["--data", *map(str, options.data)]
    defaults = DemoOptions(out=options.out)
    for option in fields(options):
        value = getattr(options, option.name)
        if option.name not in _NOT_FLAGS and value != getattr(defaults, option.name):
            flag = "--" + option.name.replace("_", "-")
            parts += [flag, str(0 if value is None else value)]
    return shlex.join(parts)


@dataclass(frozen=True)
class DemoPaths:
    """Every file and folder of a demo folder ``out``."""

    out: Path

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def train(self) -> Path:
        return self.out / "train"

    @property
    def predict(self) -> Path:
        return self.out / "predict"

    @property
    def relax(self) -> Path:
        return self.out / "relax"

    @property
    def export(self) -> Path:
        return self.out / "export"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def checkpoint(self) -> Path:
        return self.train / "checkpoints" / TIMESTAMP_ID / "checkpoint.pt"

    def submission(self, task: str) -> Path:
        return self.out / f"{task}_submission.npz"

    @property
    def curves_png(self) -> Path:
        return self.out / "learning_curves.png"

    @property
    def summary_md(self) -> Path:
        return self.out / "summary.md"

    @property
    def summary_json(self) -> Path:
        return self.out / "summary.json"

    def relative(self, path: Path) -> str:
        """``path`` relative to ``out`` (records stay valid if the folder moves)."""
        return str(Path(path).relative_to(self.out))

    def resolve(self, relative: str) -> Path:
        return self.out / relative

    def owned(self) -> list[Path]:
        """What the demo writes in ``out``: all of it, and nothing else, goes with --restart."""
        from ocp_graphpar.tools.demo.state import STATE_DIR

        return [
            self.out / STATE_DIR,
            self.data,
            self.train,
            self.predict,
            self.relax,
            self.export,
            self.logs,
            self.submission("s2ef"),
            self.submission("is2rs"),
            self.curves_png,
            self.summary_md,
            self.summary_json,
        ]
