"""Checkpoints and result files that are the old file or the complete new one, never half.

fairchem-core 1.10 writes every output in place: ``BaseTrainer.save`` through
``save_checkpoint`` (``torch.save`` onto ``checkpoint.pt`` / ``best_checkpoint.pt``),
``BaseTrainer.save_results`` (``--mode predict``) and ``OCPTrainer.run_relaxations``
(``relaxed_positions.npz``) with ``np.savez_compressed`` into ``results_dir``, and
``load_references_and_normalizers`` the fitted ``normalizers.pt`` / ``element_references.pt``
into the checkpoint folder. A job killed while writing (SLURM preemption, Ctrl-C, out of memory)
leaves a truncated file, which the resumed run or the user then cannot load.

:class:`AtomicOutputs` lets upstream write each file under a hidden name in the same folder,
flushes it to disk and renames it onto the real name (:func:`ocp_graphpar.atomic.replace_durably`).
Upstream's methods run unchanged (through ``super()``); only where they write is redirected.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fairchem.core.common import distutils

from ocp_graphpar.atomic import replace_durably

#: The folder inside ``results_dir`` (and the checkpoint folder) that files are written into
#: before they are renamed into place; a run that died while writing leaves its files here.
PARTIAL_DIR = ".partial"
#: Appended to the hidden name a checkpoint is written under: ``.checkpoint.pt.partial``.
PARTIAL_SUFFIX = ".partial"


def partial_name(checkpoint_file: str) -> str:
    """The hidden sibling name ``checkpoint_file`` is written under before the rename."""
    folder, name = os.path.split(checkpoint_file)
    return os.path.join(folder, f".{name}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def staged_folder(cmd: dict[str, Any], key: str) -> Iterator[None]:
    """Point the folder ``cmd[key]`` at its ``.partial`` subfolder for the ``with`` block, then
    rename each file written there into the folder; if the block fails, discard them instead.

    Only the master rank writes fairchem's outputs, so other ranks (and runs whose folder
    upstream never created, such as ``--debug`` runs) are left as they are. The folder is
    restored before the files move, so nothing the block saved records the staging name.
    """
    final = Path(cmd[key])
    if not distutils.is_master() or not final.is_dir():
        yield
        return
    staging = final / PARTIAL_DIR
    staging.mkdir(exist_ok=True)
    _empty(staging)  # what a run killed while writing left behind
    cmd[key] = str(staging)
    try:
        yield
    except BaseException:
        _empty(staging)
        staging.rmdir()
        raise
    finally:
        cmd[key] = str(final)
    for path in sorted(staging.iterdir()):
        replace_durably(path, final / path.name)
    staging.rmdir()


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


class AtomicOutputs:
    """Trainer mixin (before ``OCPTrainer`` in the bases) whose outputs are written atomically.

    Checkpoints go through a hidden file name rather than a staging folder: ``save`` pickles
    ``self.config``, whose ``cmd.checkpoint_dir`` must keep naming the real folder.
    """

    def save(
        self,
        metrics: dict | None = None,
        checkpoint_file: str = "checkpoint.pt",
        training_state: bool = True,
    ) -> str | None:
        partial = partial_name(checkpoint_file)
        try:
            written = super().save(
                metrics=metrics, checkpoint_file=partial, training_state=training_state
            )
        except BaseException:
            if distutils.is_master():  # the only rank that writes: never touch another's file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.config["cmd"]["checkpoint_dir"], partial))
            raise
        if written is None:  # not the master rank, or a --debug run: nothing was written
            return None
        final = os.path.join(os.path.dirname(written), os.path.basename(checkpoint_file))
        replace_durably(written, final)
        return final

    def save_results(
        self,
        predictions: dict[str, Any],
        results_file: str | None,
        keys: Sequence[str] | None = None,
    ) -> None:
        with staged_folder(self.config["cmd"], "results_dir"):
            super().save_results(predictions, results_file, keys)

    def run_relaxations(self) -> None:
        with staged_folder(self.config["cmd"], "results_dir"):
            super().run_relaxations()

    def load_references_and_normalizers(self) -> None:
        # Upstream saves the fitted values into the checkpoint folder; nothing pickles
        # ``self.config`` meanwhile, so the folder itself can be staged here.
        with staged_folder(self.config["cmd"], "checkpoint_dir"):
            super().load_references_and_normalizers()
