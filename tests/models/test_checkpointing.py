"""Activation checkpointing that also pays with conservative forces (``models/checkpointing.py``).

Derivatives up to the second equal the un-checkpointed computation; a third is refused; the
forces' backward pass skips the weight VJPs on whatever thread it runs; a block with dropout
draws the same masks when recomputed, and the global RNG ends as without checkpointing; and a
conservative-force training step keeps a fraction of the un-checkpointed step's activations
(counted bytes, not time). Autocast: ``test_checkpointing_autocast.py``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import pytest
import torch
from torch import nn

from ocp_graphpar.models import checkpointing
from ocp_graphpar.models.checkpointing import checkpoint_block

#: Where the thread and RNG tests run: CUDA (when present) is where backward passes run on the
#: engine's device threads and dropout draws from the device's generator.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.gpu),
]


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
    ones = torch.ones(3, 8, device=positions.device)
    rows = torch.arange(len(positions), device=positions.device)
    geometry = Geometry(torch.sin(positions @ ones), rows)
    x = torch.cos(0.3 * positions @ ones[:, :4])
    total = 0.0
    for _ in range(3):
        x, e = (
            checkpoint_block(block, layers, x, geometry)
            if checkpointed
            else block(layers, x, geometry)
        )
        total = total + e
    return total + (x**2).sum()


def on_another_thread(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()`` run on a new thread, as CUDA runs backward passes on per-device threads."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()))
    thread.start()
    thread.join()
    return result["value"]


def loss_and_gradients(
    layers, *, checkpointed: bool, forces_thread: str = "caller"
) -> list[torch.Tensor]:
    layers.zero_grad(set_to_none=True)
    positions = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    e = energy(layers, positions, checkpointed=checkpointed)

    def gradient() -> torch.Tensor:
        return torch.autograd.grad(e, positions, create_graph=True)[0]

    forces = -(gradient() if forces_thread == "caller" else on_another_thread(gradient))
    (e**2 + (forces**3).sum()).backward()  # second order: the loss is on -dE/dpos
    return [e.detach(), forces.detach(), positions.grad] + [p.grad for p in layers.parameters()]


def three_layers() -> nn.ModuleList:
    return nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 1)])


@pytest.mark.parametrize("forces_thread", ["caller", "another"])
def test_first_and_second_derivatives_equal_the_plain_computation(forces_thread):
    """Also when the forces' backward pass runs on another thread than the forward pass."""
    torch.manual_seed(0)
    layers = three_layers()
    plain = loss_and_gradients(layers, checkpointed=False)
    ours = loss_and_gradients(layers, checkpointed=True, forces_thread=forces_thread)
    for expected, got in zip(plain, ours):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_the_forces_pass_skips_weight_vjps_on_any_thread(monkeypatch, device):
    """``grad(E, pos, create_graph=True)`` run on a thread that set nothing computes no weight
    VJP in any block, and the loss's backward pass rebuilds those VJPs without weights too
    (it still gets every weight gradient, as the test above checks). On CUDA the engine's
    device thread runs the blocks' backward whichever thread asks."""
    torch.manual_seed(0)
    layers = three_layers().to(device)
    weights = {id(p) for p in layers.parameters()}
    vjp = checkpointing._vjp
    calls: list[tuple[str, bool, int]] = []  # (thread, create_graph, weights among wrt)

    def counted_vjp(outputs, grad_outputs, wrt, *, create_graph):
        thread = threading.current_thread().name
        calls.append((thread, create_graph, sum(id(w) in weights for w in wrt)))
        return vjp(outputs, grad_outputs, wrt, create_graph=create_graph)

    monkeypatch.setattr(checkpointing, "_vjp", counted_vjp)
    positions = torch.randn(5, 3, device=device, requires_grad=True)
    e = energy(layers, positions, checkpointed=True)
    grad = on_another_thread(lambda: torch.autograd.grad(e, positions, create_graph=True)[0])
    here = threading.current_thread().name
    assert [(thread != here, count) for thread, _, count in calls] == [(True, 0)] * 3
    calls.clear()
    (grad**2).sum().backward()
    assert all(p.grad is not None for p in layers.parameters() if p is not layers[2].bias)
    rebuilt = [count for _, create_graph, count in calls if create_graph]
    assert rebuilt == [0, 0, 0]
    assert max(count for _, _, count in calls) == len(weights)


def test_gradients_of_a_block_input_leaf_and_of_the_weights_by_autograd_grad():
    """``autograd.grad`` of a leaf the block reads directly, and of the weights alone: the
    engine's answer for a leaf it returns (torch declines to give it) counts as needed."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 3)
    x = torch.randn(4, 3, requires_grad=True)

    def loss(checkpointed: bool) -> torch.Tensor:
        run = checkpoint_block if checkpointed else (lambda block, *args: block(*args))
        return (torch.tanh(run(layer, x)) ** 2).sum()

    for wrt in ([x], list(layer.parameters()), [x, layer.weight]):
        expected = torch.autograd.grad(loss(False), wrt)
        got = torch.autograd.grad(loss(True), wrt)
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def dropout_block(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(layers[1](layers[2](torch.tanh(layers[0](x))))) + x


def dropout_step(layers: nn.ModuleList, device: str, *, checkpointed: bool) -> list[torch.Tensor]:
    """A seeded second-order step through three dropout blocks on ``device``, then the state of
    the global RNG that dropout draws from there."""
    torch.manual_seed(7)
    layers.zero_grad(set_to_none=True)
    positions = torch.randn(6, 3, device=device).requires_grad_()
    x = torch.cos(positions @ torch.ones(3, 4, device=device))
    for _ in range(3):
        x = checkpoint_block(dropout_block, layers, x) if checkpointed else dropout_block(layers, x)
    e = (x**2).sum()
    (grad,) = torch.autograd.grad(e, positions, create_graph=True)
    (e + (grad**2).sum()).backward()
    after = torch.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    return [x.detach(), grad.detach(), *(p.grad for p in layers.parameters()), after]


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_draws_the_forward_masks_and_leaves_the_global_rng_as_without_checkpointing(
    device,
):
    torch.manual_seed(0)
    layers = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 4), nn.Dropout(p=0.5)]).to(device)
    plain = dropout_step(layers, device, checkpointed=False)
    ours = dropout_step(layers, device, checkpointed=True)
    for expected, got in zip(plain[:-1], ours[:-1]):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(ours[-1], plain[-1])


def test_third_derivatives_are_refused():
    layers = three_layers()
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
    from ocp_graphpar.measure.memory import step_activation_peak
    from ocp_graphpar.measure.steps import training_step

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
    keep every recomputed block alive until the loss's backward pass, which made checkpointing
    save next to nothing (docs/benchmarks.md gives the figures at the bench's widths)."""
    from helpers.oc20 import fairchem_batch, oc20_batch_atoms

    if family == "dimenet":
        from helpers.dimenet_cases import TINY

        from ocp_graphpar.models import DimeNetPPXL as model_class
    else:
        from helpers.gemnet_cases import TINY

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
    # Wider models save more; at these test widths the saving is smallest.
    assert checkpointed < 0.65 * plain, (checkpointed, plain)
