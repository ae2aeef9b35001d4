"""GemNet-XL scale factors (legacy files, fits under GP) and its errors for bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from fairchem.core.models.gemnet.gemnet import GemNetT
from fairchem.core.modules.scaling.scale_factor import ScaleFactor
from helpers.gemnet_cases import TINY, fit_scale_factors, graph_parallel_model
from helpers.oc20 import fairchem_batch, oc20_batch_atoms

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.models import GemNetXL
from ocp_graphpar.parallel import check_gp_size, setup_groups


def legacy_scale_file(tmp_path):
    """A scale file in the old naming (`IntBlock_i_sum`), as the shipped GemNet-XL one."""
    model = graph_parallel_model()
    scales = {m.name: float(m.scale_factor) for m in model.modules() if isinstance(m, ScaleFactor)}
    legacy = {k.replace("AtomUpdate_", "IntBlock_"): v for k, v in scales.items()}
    assert legacy != scales
    path = tmp_path / "gemnet_legacy_scales.json"
    path.write_text(json.dumps({"comment": "legacy names", **legacy}))
    return path, scales


def test_legacy_scale_file_loads_with_a_warning(tmp_path, caplog):
    path, scales = legacy_scale_file(tmp_path)
    with pytest.raises(ValueError, match="Missing entries"):
        GemNetT(**TINY, scale_file=str(path))  # upstream 1.10 refuses it
    with caplog.at_level(logging.WARNING):
        model = GemNetXL(**TINY, scale_file=str(path))
    assert "legacy names" in caplog.text
    loaded = {m.name: float(m.scale_factor) for m in model.modules() if isinstance(m, ScaleFactor)}
    assert loaded == pytest.approx(scales, rel=1e-7)


def test_scale_factor_fit_is_the_same_at_any_gp_size(gloo_world):
    batch = fairchem_batch(oc20_batch_atoms(2))
    expected = fit_scale_factors(batch)
    assert len(expected) > 5 and all(v > 0 for v in expected)
    for values in gloo_world(4).run(fit_scale_factors, batch):
        assert values == pytest.approx(expected, rel=1e-10)


def auto_fitted_scales(batches) -> dict[str, float]:
    """A GemNet-XL with ``auto_fit_scale_factors`` after one training forward pass; DP group d
    takes batch d."""
    from ocp_graphpar.parallel import dp_rank

    torch.set_default_dtype(torch.float64)
    model = graph_parallel_model(options={"auto_fit_scale_factors": True}).train()
    model(batches[dp_rank()].clone())
    return {m.name: float(m.scale_factor) for m in model.modules() if isinstance(m, ScaleFactor)}


def test_first_batch_fit_over_dp_and_gp_ranks_matches_one_process(gloo_world):
    atoms = oc20_batch_atoms(4)
    [expected] = gloo_world(1).run(auto_fitted_scales, [fairchem_batch(atoms)])
    assert len(expected) > 5 and all(value > 0 for value in expected.values())
    halves = [fairchem_batch(atoms[:2]), fairchem_batch(atoms[2:])]
    for values in gloo_world(4).run(auto_fitted_scales, halves, gp_size=2):
        assert values == pytest.approx(expected, rel=1e-9)


def test_gp_size_that_does_not_divide_the_world_is_refused():
    with pytest.raises(
        UserFacingError, match=r"gp_gpus=3 does not divide the world size 4.*\[1, 2, 4\]"
    ):
        check_gp_size(4, 3)
    check_gp_size(4, 2)


def test_graph_parallel_without_a_process_group_is_refused():
    with pytest.raises(UserFacingError, match="init_process_group"):
        setup_groups(2)


def test_checkpoint_with_other_widths_names_the_mismatch():
    small = graph_parallel_model()
    wider = GemNetXL(**{**TINY, "emb_size_edge": 16}).double()
    with pytest.raises(UserFacingError, match=r"emb_size_edge.*12.*16"):
        wider.load_state_dict(small.state_dict())
    torch.testing.assert_close(
        graph_parallel_model().state_dict()["atom_emb.embeddings.weight"],
        small.state_dict()["atom_emb.embeddings.weight"],
    )
