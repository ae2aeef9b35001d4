"""Activation checkpointing that also pays when forces are ``-dE/dpos``.

``torch.utils.checkpoint`` saves a block's inputs and recomputes its activations in the backward
pass. That frees memory when the backward pass is the last use of the activations. Conservative
forces are a backward pass taken with ``create_graph=True`` inside the forward pass: it recomputes
each block, and the graph of the forces keeps the recomputed activations alive until the loss's
backward pass, so checkpointing saves next to nothing.

:func:`checkpoint_block` checkpoints the gradient too. In the forward pass a block runs without a
graph and keeps its inputs. Its backward pass is :class:`_BlockVJP`, itself a function that
recomputes the block, returns the vector-Jacobian product and again keeps only its inputs (the
block's inputs and the incoming gradient). Only the loss's backward pass through the forces,
:meth:`_BlockVJP.backward`, builds one block's graph of the gradient at a time, differentiates it
and frees it. So at most one block's activations and gradient graph are alive at once, whether
forces come from a head or from ``-dE/dpos``; derivatives are the un-checkpointed model's up to
the second (a third raises).

Each recompute runs in the state the block's forward pass ran in (:class:`_ForwardState`): the
autocast settings of the CPU and of the inputs' devices, and the RNG states of the CPU and those
devices (forked, so the global RNG does not advance). Under AMP the recomputed block is thus the
forward's block, in the same precision, even though the backward pass runs outside autocast, and
a block with dropout draws the same mask. The first-order VJP, rebuilt for the second
derivative, runs in the autocast settings of the backward pass that first took it, where the
plain model built its graph of the forces.

Which gradients a backward pass computes is asked of the autograd engine, per input and
parameter: ``autograd.grad(energy, pos, create_graph=True)`` needs no weight gradients, so the
blocks skip their weight VJPs there (the loss's backward pass still gets them all). The answer
comes from the graph task being executed, not from a flag of the calling thread, so it holds on
the per-device threads where CUDA runs backward passes.

Inputs the gradient flows to are the floating-point tensors that require grad, found in the
block's arguments (also inside tuples, lists, dicts and dataclasses such as a model's bases), and
the parameters of the modules among the arguments. A block must not read other tensors that
require grad (e.g. through a closure): autograd would not see their use.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

Output = TypeVar("Output")


def checkpoint_block(block: Callable[..., Output], *args: Any) -> Output:
    """``block(*args)`` without keeping its activations: recomputed in the backward pass, also
    when that backward pass is itself differentiated (conservative forces)."""
    inputs: list[Tensor] = []
    template = _lift(args, inputs)
    params = _parameters(block, args)
    holder: dict[str, Any] = {}

    def run(tensors: Sequence[Tensor]) -> list[Tensor]:
        outputs, spec = tree_flatten(block(*_fill(template, tensors)))
        holder["spec"], holder["constants"] = (
            spec,
            [None if isinstance(x, Tensor) else x for x in outputs],
        )
        return [x for x in outputs if isinstance(x, Tensor)]

    tensors = _Checkpoint.apply(run, len(inputs), *inputs, *params)
    tensors = iter(tensors if isinstance(tensors, tuple) else (tensors,))
    leaves = [next(tensors) if c is None else c for c in holder["constants"]]
    return tree_unflatten(leaves, holder["spec"])


def call(block: Callable[..., Output], *args: Any) -> Output:
    """``block(*args)``: the default for a model function that runs its units through a
    checkpointing callable (``run=model.checkpointed``) when given one."""
    return block(*args)


@dataclasses.dataclass(frozen=True)
class _Autocast:
    """Autocast settings of some device types, as ``torch.autocast`` takes them."""

    #: ``(device_type, enabled, dtype)`` per device type.
    settings: tuple[tuple[str, bool, torch.dtype], ...]
    cache_enabled: bool

    @classmethod
    def capture(cls, device_types: Iterable[str]) -> _Autocast:
        settings = tuple(
            (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
            for kind in device_types
        )
        return cls(settings, torch.is_autocast_cache_enabled())

    @property
    def device_types(self) -> tuple[str, ...]:
        return tuple(kind for kind, _, _ in self.settings)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """These settings inside, whatever the caller's (also when it disabled autocast)."""
        with contextlib.ExitStack() as stack:
            for kind, enabled, dtype in self.settings:
                stack.enter_context(
                    torch.autocast(
                        kind, dtype=dtype, enabled=enabled, cache_enabled=self.cache_enabled
                    )
                )
            yield


@dataclasses.dataclass(frozen=True)
class _Rng:
    """The CPU generator's state and those of some accelerator devices."""

    cpu: Tensor
    devices: tuple[torch.device, ...]
    states: tuple[Tensor, ...]

    @classmethod
    def capture(cls, devices: Sequence[torch.device]) -> _Rng:
        # Host-side copies of the generators' seeds and offsets: no device synchronisation.
        states = tuple(torch.get_device_module(d.type).get_rng_state(d.index) for d in devices)
        return cls(torch.get_rng_state(), tuple(devices), states)

    def install(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in zip(self.devices, self.states):
            torch.get_device_module(device.type).set_rng_state(state, device.index)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """These states inside; the caller's again after, as if nothing had drawn from them."""
        caller = _Rng.capture(self.devices)
        self.install()
        try:
            yield
        finally:
            caller.install()


@dataclasses.dataclass(frozen=True)
class _ForwardState:
    """What a block's forward pass ran under and its recompute must run under again."""

    autocast: _Autocast
    rng: _Rng

    @classmethod
    def capture(cls, tensors: Sequence[Tensor]) -> _ForwardState:
        """The current state, for the CPU and the accelerator devices ``tensors`` live on."""
        devices = sorted({t.device for t in tensors if t.device.type != "cpu"}, key=str)
        kinds = dict.fromkeys(["cpu", *(d.type for d in devices)])
        kinds = [kind for kind in kinds if torch.amp.is_autocast_available(kind)]
        return cls(_Autocast.capture(kinds), _Rng.capture(devices))

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        with self.rng.restored(), self.autocast.restored():
            yield


@dataclasses.dataclass(frozen=True)
class _Block:
    """A checkpointed block: ``run`` maps its input tensors to its output tensors."""

    run: Callable[[Sequence[Tensor]], list[Tensor]]
    num_inputs: int
    forward_state: _ForwardState

    def recompute(
        self, inputs: Sequence[Tensor], params: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``(leaves, outputs)``: the block's outputs as in the forward pass, with a graph to
        fresh input leaves and to the parameters (``leaves`` = those, then the parameters)."""
        leaves = [x.detach().requires_grad_() for x in inputs]
        with torch.enable_grad(), self.forward_state.restored():
            return [*leaves, *params], self.run(leaves)


class _Checkpoint(torch.autograd.Function):
    """Forward: the block without a graph. Backward: :class:`_BlockVJP`."""

    @staticmethod
    def forward(
        ctx,
        run: Callable[[Sequence[Tensor]], list[Tensor]],
        num_inputs: int,
        *inputs_and_params: Tensor,
    ):
        # Captured before the block runs: its recomputes must draw the same random numbers.
        ctx.block = _Block(run, num_inputs, _ForwardState.capture(inputs_and_params))
        ctx.params = inputs_and_params[num_inputs:]
        ctx.save_for_backward(*inputs_and_params[:num_inputs])
        ctx.set_materialize_grads(False)
        with torch.no_grad():
            return tuple(run(inputs_and_params[:num_inputs]))

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor | None):
        inputs = ctx.saved_tensors
        # One edge per tensor argument of forward: the inputs, then the parameters.
        needed = tuple(_engine_will_execute(node) for node, _ in ctx.next_functions)
        grads = _BlockVJP.apply(ctx.block, needed, *inputs, *ctx.params, *grad_outputs)
        return None, None, *grads


class _BlockVJP(torch.autograd.Function):
    """``(inputs, params, grad_outputs) -> d(outputs . grad_outputs)/d(inputs, params)``
    (``None`` where this backward pass needs no gradient), recomputing the block; its own
    backward recomputes it again with a graph."""

    @staticmethod
    def forward(ctx, block: _Block, needed: tuple[bool, ...], *args: Tensor | None):
        num_leaves = len(needed)
        inputs = args[: block.num_inputs]
        ctx.params = args[block.num_inputs : num_leaves]
        grad_outputs = args[num_leaves:]
        ctx.block, ctx.needed = block, needed
        # The backward pass this runs in: the second derivative rebuilds this VJP under it.
        ctx.vjp_autocast = _Autocast.capture(block.forward_state.autocast.device_types)
        ctx.grad_slots = [g is not None for g in grad_outputs]
        ctx.save_for_backward(*inputs, *(g for g in grad_outputs if g is not None))
        ctx.set_materialize_grads(False)
        leaves, outputs = block.recompute(inputs, ctx.params)
        grads = iter(_vjp(outputs, grad_outputs, _select(leaves, needed), create_graph=False))
        return tuple(next(grads) if need else None for need in needed)

    @staticmethod
    def backward(ctx, *grad_grads: Tensor | None):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "activation checkpointing supports first and second derivatives only; "
                "switch model.activation_checkpointing off for higher ones"
            )
        num_inputs = ctx.block.num_inputs
        inputs = ctx.saved_tensors[:num_inputs]
        given = iter(ctx.saved_tensors[num_inputs:])
        leaves, outputs = ctx.block.recompute(inputs, ctx.params)
        grad_outputs = [
            next(given).detach().requires_grad_() if slot else None for slot in ctx.grad_slots
        ]
        with torch.enable_grad(), ctx.vjp_autocast.restored():
            first = _vjp(outputs, grad_outputs, _select(leaves, ctx.needed), create_graph=True)
        wrt = [*leaves, *(g for g in grad_outputs if g is not None)]
        second = _vjp(first, _select(grad_grads, ctx.needed), wrt, create_graph=False)
        result = list(second[: len(leaves)])
        tail = iter(second[len(leaves) :])
        result += [next(tail) if slot else None for slot in ctx.grad_slots]
        return None, None, *result


def _engine_will_execute(node: Any) -> bool:
    """Whether the backward pass running on this thread needs the gradient flowing into
    ``node`` (an edge of the function being differentiated)."""
    if node is None:
        return False
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError as error:
        # torch declines to answer for a leaf whose gradient ``autograd.grad`` returns
        # (``checkpoint_block(f, pos)`` differentiated by ``grad(e, pos)``): it is needed.
        if "leaf node" not in str(error):
            raise
        return True


def _select(items: Sequence[Any], mask: Sequence[bool]) -> list[Any]:
    return [item for item, keep in zip(items, mask) if keep]


def _vjp(outputs, grad_outputs, wrt: list[Tensor], *, create_graph: bool) -> tuple:
    pairs = [
        (out, grad)
        for out, grad in zip(outputs, grad_outputs)
        if grad is not None and out is not None and out.requires_grad
    ]
    if not pairs:
        return (None,) * len(wrt)
    outs, grads = zip(*pairs)
    return torch.autograd.grad(
        outs, wrt, grads, create_graph=create_graph, allow_unused=True, materialize_grads=False
    )


def _lift(obj: Any, inputs: list[Tensor]) -> Any:
    """``obj`` with each differentiable tensor appended to ``inputs`` and replaced by its slot."""

    def lift(tensor: Tensor) -> Tensor | _Slot:
        if not (tensor.requires_grad and tensor.is_floating_point()):
            return tensor
        inputs.append(tensor)
        return _Slot(len(inputs) - 1)

    return _map_leaves(obj, lift)


def _fill(obj: Any, values: Sequence[Tensor]) -> Any:
    """Inverse of :func:`_lift`: each slot takes its tensor from ``values``."""
    return _map_leaves(obj, lambda leaf: values[leaf.index] if isinstance(leaf, _Slot) else leaf)


def _map_leaves(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``obj`` with ``fn`` applied to its tensors and slots, also inside tuples, lists, dicts
    and dataclasses; a container is rebuilt only where a leaf changed."""
    if isinstance(obj, (Tensor, _Slot)):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        mapped = [_map_leaves(x, fn) for x in obj]
        return type(obj)(*mapped) if hasattr(obj, "_fields") else type(obj)(mapped)
    if isinstance(obj, dict):
        return {key: _map_leaves(value, fn) for key, value in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            mapped = _map_leaves(value, fn)
            if mapped is not value:
                changes[f.name] = mapped
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


@dataclasses.dataclass(frozen=True)
class _Slot:
    index: int


def _parameters(block: Callable, args: Sequence[Any]) -> list[Tensor]:
    """Trainable parameters of the modules among ``block`` and ``args``, each once."""
    seen: dict[int, Tensor] = {}
    for candidate in (block, *args):
        if isinstance(candidate, nn.Module):
            for param in candidate.parameters():
                if param.requires_grad:
                    seen.setdefault(id(param), param)
    return list(seen.values())
