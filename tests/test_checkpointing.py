"""Activation checkpointing that also pays with conservative forces (``models/checkpointing.py``).

Derivatives up to the second equal the un-checkpointed computation; a third is refused; and a
conservative-force training step keeps a fraction of the un-checkpointed step's activations
(counted bytes, not time).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch import nn

from ocp_graphpar.models.checkpointing import checkpoint_block, input_gradients_only


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@dataclasses.dataclass
class Geometry:
    features: torch.Tensor  # (n, 8), a function of the positions
    index: torch.Tensor  # (n,) integer rows: not differentiable


def block(layers: nn.ModuleList, x: torch.Tensor, geometry: Geometry):
    """A residual block with an energy head: ``(x (n, 4), energy ())``."""
    h = torch.tanh(layers[0](x)) * geometry.features[geometry.index]
    return torch.tanh(layers[1](h)) + x, layers[2](torch.sin(h[:, :4])).sum()


def energy(layers, positions, *, checkpointed: bool):
    geometry = Geometry(torch.sin(positions @ torch.ones(3, 8)), torch.arange(len(positions)))
    x = torch.cos(0.3 * positions @ torch.ones(3, 4))
    total = 0.0
    for _ in range(3):
        x, e = (
            checkpoint_block(block, layers, x, geometry)
            if checkpointed
            else block(layers, x, geometry)
        )
        total = total + e
    return total + (x**2).sum()


def loss_and_gradients(
    layers, *, checkpointed: bool, forces_context=contextlib.nullcontext
) -> list[torch.Tensor]:
    layers.zero_grad(set_to_none=True)
    positions = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    e = energy(layers, positions, checkpointed=checkpointed)
    with forces_context():
        (grad,) = torch.autograd.grad(e, positions, create_graph=True)
    forces = -grad
    (e**2 + (forces**3).sum()).backward()  # second order: the loss is on -dE/dpos
    return [e.detach(), forces.detach(), positions.grad] + [p.grad for p in layers.parameters()]


@pytest.mark.parametrize("forces_context", [contextlib.nullcontext, input_gradients_only])
def test_first_and_second_derivatives_equal_the_plain_computation(forces_context):
    """Also when the forces' backward pass skips the weight gradients, as the models' does."""
    torch.manual_seed(0)
    layers = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 1)])
    plain = loss_and_gradients(layers, checkpointed=False)
    ours = loss_and_gradients(layers, checkpointed=True, forces_context=forces_context)
    for expected, got in zip(plain, ours):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_third_derivatives_are_refused():
    layers = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 1)])
    positions = torch.randn(5, 3).requires_grad_()
    e = energy(layers, positions, checkpointed=True)
    (grad,) = torch.autograd.grad(e, positions, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives only"):
        torch.autograd.grad(grad.sum(), positions, create_graph=True)


def test_a_block_that_returns_constants_beside_tensors():
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    out, label = checkpoint_block(lambda lin, t: (lin(t), "label"), layer, x)
    assert label == "label"
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def step_peak(model, batch) -> int:
    from ocp_graphpar.tools.bench.measure import training_step
    from ocp_graphpar.tools.bench.memory import step_activation_peak

    for param in model.parameters():  # allocated before the step, as in training
        param.grad = torch.zeros_like(param)
    with step_activation_peak(torch.device("cpu")) as peak:
        training_step(model, batch)
    return peak["peak"]


#: Widths where edges, not the bases, hold most of a step (as at the models' real widths).
WIDER = {
    "dimenet": dict(hidden_channels=64, int_emb_size=16, out_emb_channels=32),
    "gemnet": dict(emb_size_atom=32, emb_size_edge=64, emb_size_trip=16, emb_size_bil_trip=16),
}


@pytest.mark.parametrize("family", ["dimenet", "gemnet"])
def test_checkpointing_pays_when_forces_are_the_energy_gradient(family):
    """Activation bytes of one training step at P = 1: with -dE/dpos, the forces' graph used to
    keep every recomputed block alive until the loss's backward pass (0.92x of the plain step
    for DimeNet++ at #19's widths before)."""
    from oc20 import fairchem_batch, oc20_batch_atoms

    if family == "dimenet":
        from dimenet_cases import TINY

        from ocp_graphpar.models import DimeNetPPXL as model_class
    else:
        from gemnet_cases import TINY

        from ocp_graphpar.models import GemNetXL as model_class

    def build(**options):
        torch.manual_seed(0)
        widths = {**TINY, **WIDER[family], "direct_forces": False}
        if family == "dimenet":
            widths.pop("direct_forces")
        return model_class(**widths, **options).double()

    batch = fairchem_batch(oc20_batch_atoms(2))
    plain = step_peak(build(), batch)
    checkpointed = step_peak(build(activation_checkpointing=True), batch)
    # at these widths: DimeNet++ 0.51x, GemNet 0.59x; at #19's widths 0.30x and 0.24x
    assert checkpointed < 0.65 * plain, (checkpointed, plain)
