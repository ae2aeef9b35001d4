"""Activation checkpointing that also pays when forces are ``-dE/dpos``.

``torch.utils.checkpoint`` saves a block's inputs and recomputes its activations in the backward
pass. That frees memory when the backward pass is the last use of the activations. Conservative
forces are a backward pass taken with ``create_graph=True`` inside the forward pass: it recomputes
each block, and the graph of the forces keeps the recomputed activations alive until the loss's
backward pass, so checkpointing saves nothing (DimeNet++-XL measured 1,972 MiB with it, 2,132
without, at #19's widths).

:func:`checkpoint_block` checkpoints the gradient too. In the forward pass a block runs without a
graph and keeps its inputs. Its backward pass is :class:`_BlockVJP`, itself a function that
recomputes the block, returns the vector-Jacobian product and again keeps only its inputs (the
block's inputs and the incoming gradient). Only the loss's backward pass through the forces,
:meth:`_BlockVJP.backward`, builds one block's graph of the gradient at a time, differentiates it
and frees it. So at most one block's activations and gradient graph are alive at once, whether
forces come from a head or from ``-dE/dpos``; derivatives are the un-checkpointed model's up to
the second (a third raises).

Inputs the gradient flows to are the floating-point tensors that require grad, found in the
block's arguments (also inside tuples, lists, dicts and dataclasses such as a model's bases), and
the parameters of the modules among the arguments. A block must not read other tensors that
require grad (e.g. through a closure): autograd would not see their use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
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


_input_gradients_only = threading.local()


@contextlib.contextmanager
def input_gradients_only() -> Iterator[None]:
    """Declare that the backward passes run inside need no parameter gradients, as
    ``autograd.grad(energy, pos, create_graph=True)`` for conservative forces: the blocks' weight
    gradients are then not computed there (the loss's backward pass still gets them all)."""
    previous = getattr(_input_gradients_only, "active", False)
    _input_gradients_only.active = True
    try:
        yield
    finally:
        _input_gradients_only.active = previous


class _Checkpoint(torch.autograd.Function):
    """Forward: the block without a graph. Backward: :class:`_BlockVJP`."""

    @staticmethod
    def forward(ctx, run, num_inputs: int, *inputs_and_params: Tensor):
        ctx.run, ctx.params = run, inputs_and_params[num_inputs:]
        ctx.save_for_backward(*inputs_and_params[:num_inputs])
        ctx.set_materialize_grads(False)
        with torch.no_grad():
            return tuple(run(inputs_and_params[:num_inputs]))

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor | None):
        inputs = ctx.saved_tensors
        with_params = not getattr(_input_gradients_only, "active", False)
        grads = _BlockVJP.apply(
            ctx.run, len(inputs), len(ctx.params), with_params, *inputs, *ctx.params, *grad_outputs
        )
        return None, None, *grads


class _BlockVJP(torch.autograd.Function):
    """``(inputs, params, grad_outputs) -> d(outputs . grad_outputs)/d(inputs, params)``
    (``None`` for the parameters unless ``with_params``), recomputing the block; its own backward
    recomputes it again with a graph."""

    @staticmethod
    def forward(
        ctx, run, num_inputs: int, num_params: int, with_params: bool, *args: Tensor | None
    ):
        inputs = args[:num_inputs]
        ctx.params = args[num_inputs : num_inputs + num_params]
        grad_outputs = args[num_inputs + num_params :]
        ctx.run, ctx.num_inputs, ctx.with_params = run, num_inputs, with_params
        ctx.grad_slots = [g is not None for g in grad_outputs]
        ctx.save_for_backward(*inputs, *(g for g in grad_outputs if g is not None))
        ctx.set_materialize_grads(False)
        with torch.enable_grad():
            leaves, outputs = _recompute(run, inputs, ctx.params)
            wrt = leaves if with_params else leaves[:num_inputs]
            grads = _vjp(outputs, grad_outputs, wrt, create_graph=False)
        return (*grads, *(None,) * (len(leaves) - len(wrt)))

    @staticmethod
    def backward(ctx, *grad_grads: Tensor | None):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "activation checkpointing supports first and second derivatives only; "
                "switch model.activation_checkpointing off for higher ones"
            )
        inputs = ctx.saved_tensors[: ctx.num_inputs]
        given = iter(ctx.saved_tensors[ctx.num_inputs :])
        with torch.enable_grad():
            leaves, outputs = _recompute(ctx.run, inputs, ctx.params)
            grad_outputs = [
                next(given).detach().requires_grad_() if slot else None for slot in ctx.grad_slots
            ]
            first = leaves if ctx.with_params else leaves[: ctx.num_inputs]
            grads = _vjp(outputs, grad_outputs, first, create_graph=True)
            wrt = [*leaves, *(g for g in grad_outputs if g is not None)]
            second = _vjp(grads, grad_grads[: len(first)], wrt, create_graph=False)
        result = list(second[: len(leaves)])
        tail = iter(second[len(leaves) :])
        result += [next(tail) if slot else None for slot in ctx.grad_slots]
        return None, None, None, None, *result


def _recompute(run, inputs: Sequence[Tensor], params: Sequence[Tensor]) -> tuple[list, list]:
    """The block's outputs with a graph to fresh input leaves and to the module parameters."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    return [*leaves, *params], run(leaves)


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
