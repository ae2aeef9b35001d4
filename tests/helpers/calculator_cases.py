"""Checkpoints and structures for the ASE calculator's tests: fairchem-format checkpoint files of
the three models (ours or upstream's registry names), and adsorbate + slab structures."""

from __future__ import annotations

from pathlib import Path

import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms
from fairchem.core.common.registry import registry
from fairchem.core.modules.normalization.normalizer import Normalizer
from fairchem.core.modules.scaling.scale_factor import ScaleFactor

import ocp_graphpar  # noqa: F401  (registers the models)
from helpers import dimenet_cases, gemnet_cases, painn_cases
from ocp_graphpar.models.catalog import MODELS

#: The models' tiny test widths (every block runs, a few hundred atoms take seconds), at the
#: graph the checkpoints' configs ask for (built on the fly: ``checkpoint_config`` sets
#: ``otf_graph``).
WIDTHS = {
    "gemnet": {**gemnet_cases.TINY, "max_neighbors": 30},
    "dimenet": {**dimenet_cases.TINY, "cutoff": 5.0},
    "painn": {**painn_cases.TINY, "max_neighbors": 30},
}


def checkpoint_config(family: str, *, upstream: bool = False, widths: dict | None = None) -> dict:
    """A fairchem S2EF config (as a trainer saves it in its checkpoints) for the model
    ``family``, at ``widths`` (default: :data:`WIDTHS`)."""
    spec = MODELS[family]
    name = spec.upstream_registry_name if upstream else spec.registry_name
    return {
        "trainer": "ocp",
        "model": {
            "name": name,
            **(WIDTHS[family] if widths is None else widths),
            "regress_forces": True,
            "use_pbc": True,
            "otf_graph": True,
        },
        "outputs": {
            "energy": {"level": "system"},
            "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True},
        },
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 100}},
        ],
        "evaluation_metrics": {"metrics": {"energy": ["mae"], "forces": ["forcesx_mae"]}},
        "optim": {"batch_size": 1, "eval_batch_size": 1, "max_epochs": 1, "lr_initial": 1e-3},
        "task": {},
        "dataset": {"format": "ase_db", "src": "not-read"},
        "cmd": {"seed": 0},
    }


def write_checkpoint(
    path: Path,
    family: str,
    *,
    upstream: bool = False,
    ema: bool = False,
    seed: int = 0,
    widths: dict | None = None,
) -> Path:
    """Write a fairchem checkpoint of the model ``family`` with random, non-trivial weights,
    scale factors and normalisers. ``ema``: also an EMA entry (as ``checkpoint.pt`` holds it)
    whose averages differ from the weights. ``widths``: the model's options (default:
    :data:`WIDTHS`)."""
    config = checkpoint_config(family, upstream=upstream, widths=widths)
    model_args = {k: v for k, v in config["model"].items() if k != "name"}
    cls = registry.get_model_class(config["model"]["name"])
    torch.manual_seed(seed)
    model = cls(**model_args)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ScaleFactor):
                module.set_(float(0.5 + torch.rand((), generator=generator)))
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    checkpoint = {
        "epoch": 1,
        "step": 10,
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "normalizers": {
            "energy": Normalizer(mean=-0.7, rmsd=2.5).state_dict(),
            "forces": Normalizer(mean=0.0, rmsd=0.3).state_dict(),
        },
        "config": config,
        "amp": None,
    }
    if ema:
        trained = [p for p in model.parameters() if p.requires_grad]
        shadow = [p.detach() + 0.05 * torch.randn(p.shape, generator=generator) for p in trained]
        checkpoint["ema"] = {
            "decay": 0.999,
            "num_updates": 10,
            "shadow_params": shadow,
            "collected_params": [],
        }
    torch.save(checkpoint, path)
    return path


def with_ema_as_weights(source: Path, destination: Path) -> Path:
    """``source``'s checkpoint with its EMA averages written into ``state_dict`` and the EMA
    entry dropped: what fairchem's ``best_checkpoint.pt`` holds."""
    checkpoint = torch.load(source, weights_only=False)
    config = checkpoint["config"]["model"]
    model = registry.get_model_class(config["name"])(
        **{k: v for k, v in config.items() if k != "name"}
    )
    trained = [f"module.{n}" for n, p in model.named_parameters() if p.requires_grad]
    state = dict(checkpoint["state_dict"])
    state.update(zip(trained, checkpoint.pop("ema")["shadow_params"]))
    checkpoint["state_dict"] = state
    torch.save(checkpoint, destination)
    return destination


def slab(size: tuple[int, int, int] = (4, 4, 3), *, fixed_layers: int = 2) -> Atoms:
    """A Cu(111) slab with CO on top and its lowest ``fixed_layers`` layers fixed, tagged as
    OC20 tags them (0 fixed subsurface, 1 surface, 2 adsorbate), slightly rattled."""
    atoms = fcc111("Cu", size=size, vacuum=8.0, a=3.6)
    layer = atoms.get_tags()  # ase: 1 is the top layer
    atoms.set_tags([1 if t == 1 else 0 for t in layer])
    atoms.set_constraint(FixAtoms(mask=layer > size[2] - fixed_layers))
    adsorbate = molecule("CO")
    adsorbate.set_tags([2, 2])
    add_adsorbate(atoms, adsorbate, height=1.9, position="ontop")
    atoms.rattle(stdev=0.05, seed=7)
    atoms.pbc = True
    return atoms
