"""Rank functions for the sharded optimizer state and EMA tests (tests/trainers/test_sharded_state.py).

Trainer runs go through fairchem's trainer as ``trainer_cases`` does, in float64: the model is
built under float64 as the default dtype and each batch's positions and labels are cast (the
cell stays float32, as fairchem's radius graph multiplies it with float32 unit cells).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

from helpers.ocp_trainer import build_trainer, dp_batch
from ocp_graphpar.measure.model_state import model_state_bytes, sharded_model_state_bytes
from ocp_graphpar.trainers import preemption
from ocp_graphpar.trainers.preemption import DeferredSignal
from ocp_graphpar.trainers.sharded_ema import ShardedEMA
from ocp_graphpar.trainers.sharded_optimizer import Partition, ShardedOptimizer, world
from ocp_graphpar.trainers.sharded_state import read_checkpoint

GEMNET = "s2ef/gemnet_xl_demo"
#: GemNet-XL at a few thousand parameters: 1 block, widths 4 to 8.
TINY_GEMNET = {
    "num_blocks": 1,
    "emb_size_atom": 8,
    "emb_size_edge": 8,
    "emb_size_trip": 4,
    "emb_size_rbf": 4,
    "emb_size_cbf": 4,
    "emb_size_bil_trip": 4,
    "num_radial": 4,
    "num_spherical": 3,
}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """The default dtype for the block; the rank's processes serve other tests afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def detached(value):
    """``value`` with every tensor detached (upstream's stored EMA weights are clones that
    require grad, which cannot cross to the test process)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    if isinstance(value, list):
        return [detached(v) for v in value]
    return value


def _float64_trainer(run_dir: str, overrides: dict):
    return build_trainer(GEMNET, run_dir, overrides, dtype=torch.float64)


def _float64_batch(trainer, ids: list[int]):
    batch = dp_batch(trainer, ids)
    for key in ("pos", "energy", "forces"):
        batch[key] = batch[key].double()
    return batch


def _step(trainer, batch) -> dict:
    """One optimizer step as ``OCPTrainer.train`` takes it; returns the loss and the gradient
    norm fairchem logs (before clipping)."""
    logged: dict = {}
    if trainer.logger is not None:  # the master rank's only
        trainer.logger.log = lambda values, **kw: logged.update(values)
    trainer.model.train()
    out = trainer._forward(batch)
    loss = trainer._compute_loss(out, batch)
    trainer._backward(loss)
    trainer.step += 1
    trainer.scheduler.step()
    grad_norm = logged.get("grad_norm")
    return {"loss": loss.item(), "grad_norm": None if grad_norm is None else float(grad_norm)}


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer._unwrapped_model.named_parameters()}


def _ema_weights(trainer) -> dict[str, torch.Tensor]:
    """The EMA weights as validation sees them (store, copy_to, read, restore)."""
    before = _weights(trainer)
    trainer.ema.store()
    trainer.ema.copy_to()
    averaged = _weights(trainer)
    trainer.ema.restore()
    assert all(torch.equal(before[n], w) for n, w in _weights(trainer).items())
    return averaged


def train_and_save(
    run_dir: str, overrides: dict, batches: list[list[int]], save_after: int
) -> dict:
    """Train on ``batches`` (global ids per step), every rank calling ``save`` after
    ``save_after`` steps and for the best checkpoint at the end, then take a preemption
    signal. Returns the steps, weights, EMA weights, the three checkpoints' paths, this rank's
    model state bytes and (unsharded) what each of 4 sharded ranks would hold."""
    with default_dtype(torch.float64):
        trainer = _float64_trainer(run_dir, overrides)
        steps, path = [], None
        for step, ids in enumerate(batches):
            if step == save_after:
                path = trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
            steps.append(_step(trainer, _float64_batch(trainer, ids)))
        # Before the EMA readout: upstream's EMA keeps the weights it stored until the next.
        sharded = isinstance(trainer.optimizer, ShardedOptimizer)
        held = model_state_bytes(model=trainer.model, optimizer=trainer.optimizer, ema=trainer.ema)
        simulated = None  # unsharded: what sharding over 4 ranks would hold, rank by rank
        if not sharded:
            simulated = sharded_model_state_bytes(
                model=trainer.model, optimizer=trainer.optimizer, ema=trainer.ema, world_size=4
            )
        best = trainer.save(checkpoint_file="best_checkpoint.pt", training_state=False)
        preempted = _preempt(trainer)
        return {
            "best": best,
            "preempted": preempted,
            "steps": steps,
            "weights": _weights(trainer),
            "ema": _ema_weights(trainer),
            "checkpoint": path,
            "bytes": held,
            "simulated": simulated,
            "sharded": sharded,
        }


class Requeued(Exception):
    """Where submitit's handler would requeue the job (rank 0) or SLURM stop a rank."""


def _preempt(trainer) -> str | None:
    """A preemption signal at this step boundary, as StepBoundaryPreemption handles it in
    ``train``: every rank arrives, then submitit's handler checkpoints on rank 0 alone (as
    fairchem's ``Runner.checkpoint``: ``save(training_state=True)``). Returns the file."""
    written = []

    def submitit_handler(signum, frame):
        if world()[0] == 0:
            written.append(trainer.save(checkpoint_file="preempted.pt", training_state=True))
            raise Requeued

    def stopped():
        raise Requeued

    trainer._completed = (trainer.step, trainer.epoch)
    wait, preemption._wait_for_requeue = preemption._wait_for_requeue, stopped
    try:
        trainer._checkpoint_and_requeue(DeferredSignal(signal.SIGUSR2, submitit_handler))
    except Requeued:
        pass
    finally:
        preemption._wait_for_requeue = wait
    return written[0] if written else None


def save_alone_in_a_submitit_job(run_dir: str, overrides: dict, ids: list[int]) -> dict:
    """Rank 0 alone saves, as submitit's handler outside training: before the first step
    (a full checkpoint) and after it (none); and every rank saves before the first step."""
    with default_dtype(torch.float64):
        trainer = _float64_trainer(run_dir, overrides)
        together = trainer.save(checkpoint_file="together.pt")
        in_job, preemption._submitit_signal = preemption._submitit_signal, lambda: signal.SIGUSR2
        try:
            first = world()[0] == 0
            alone = trainer.save(checkpoint_file="alone.pt") if first else None
            _step(trainer, _float64_batch(trainer, ids))
            after_step = trainer.save(checkpoint_file="after_step.pt") if first else None
        finally:
            preemption._submitit_signal = in_job
        return {"together": together, "alone": alone, "after_step": after_step}


def resume(run_dir: str, overrides: dict, checkpoint: str, batches: list[list[int]]) -> dict:
    """Load ``checkpoint`` into a fresh trainer and train on ``batches``."""
    with default_dtype(torch.float64):
        trainer = _float64_trainer(run_dir, overrides)
        trainer.load_checkpoint(checkpoint)
        resumed_at = trainer.step
        steps = [_step(trainer, _float64_batch(trainer, ids)) for ids in batches]
        return {
            "resumed_at": resumed_at,
            "steps": steps,
            "weights": _weights(trainer),
            "ema": _ema_weights(trainer),
            "sharded": isinstance(trainer.optimizer, ShardedOptimizer),
        }


def build_error(run_dir: str, overrides: dict) -> str:
    """The message of the error building the trainer raises (empty if none)."""
    try:
        build_trainer(GEMNET, run_dir, overrides)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return ""


def toy_steps(shard: bool, steps: int) -> dict:
    """AdamW (AMSGrad, two param groups) and an EMA counting its updates on a toy model of
    three trainable tensors and a frozen one, sharded or not (at world 4, one rank owns
    no trainable tensor); the same (replicated) gradients on every rank. Returns weights, EMA
    weights and rank 0's state dicts, all as the unsharded objects would give them."""
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))
        model[0].bias.requires_grad_(False)
        no_decay = [model[0].bias, model[2].bias]
        optimizer = torch.optim.AdamW(
            [
                {"params": no_decay, "weight_decay": 0},
                {"params": [model[0].weight, model[2].weight]},
            ],
            lr=0.1,
            weight_decay=0.01,
            amsgrad=True,
        )
        ema: ExponentialMovingAverage
        if shard:
            rank, world_size = world()
            partition = Partition.balanced(model.parameters(), rank=rank, world_size=world_size)
            optimizer = ShardedOptimizer(optimizer, partition=partition)
            ema = ShardedEMA(model.parameters(), 0.5, partition=partition, use_num_updates=True)
        else:
            ema = ExponentialMovingAverage(model.parameters(), 0.5, use_num_updates=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
        inputs = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(steps):
            optimizer.zero_grad()
            model(inputs).square().sum().backward()
            optimizer.step()
            ema.update()
            scheduler.step()
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        ema.store()
        ema.copy_to()
        averaged = {n: p.detach().clone() for n, p in model.named_parameters()}
        ema.restore()
        if shard:
            optimizer.consolidate_state_dict(to=0)
            ema.consolidate_state_dict(to=0)
        first = world()[0] == 0
        return {
            "weights": weights,
            "ema": averaged,
            "optimizer": optimizer.state_dict() if first else None,
            "ema_state": detached(ema.state_dict()) if first else None,
            "restored": all(torch.equal(weights[n], p) for n, p in model.named_parameters()),
        }


def fairchem_train(run_dir: str, overrides: dict) -> dict:
    """``OCPTrainer.train`` itself (validation, best checkpoints, test predictions,
    checkpoints), in float32; returns the weights and the checkpoints' contents (rank 0)."""
    trainer = build_trainer(GEMNET, run_dir, overrides)
    trainer.train()
    checkpoints = {}
    if world()[0] == 0:
        folder = trainer.config["cmd"]["checkpoint_dir"]
        for name in ("checkpoint", "best_checkpoint"):
            checkpoints[name] = torch.load(f"{folder}/{name}.pt", weights_only=False)
    return {"step": trainer.step, "weights": _weights(trainer), "checkpoints": checkpoints}


def _per_tensor_broadcast(tensors, *, owners, bucket_bytes) -> None:
    """The reference: one broadcast per tensor, as ZeRO-1 sent them before buckets."""
    works = [dist.broadcast(t, src=o, async_op=True) for t, o in zip(tensors, owners)]
    for work in works:
        work.wait()


@contextlib.contextmanager
def counted_broadcasts() -> Iterator[list[int]]:
    """The bytes of each ``dist.broadcast`` call in the block, one entry per call."""
    calls: list[int] = []
    broadcast = dist.broadcast

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel() * tensor.element_size())
        return broadcast(tensor, *args, **kwargs)

    dist.broadcast = counting
    try:
        yield calls
    finally:
        dist.broadcast = broadcast


@contextlib.contextmanager
def per_tensor_broadcasts() -> Iterator[None]:
    """The optimizer and EMA broadcasting one tensor at a time for the block."""
    from ocp_graphpar.trainers import sharded_ema, sharded_optimizer

    kept = sharded_optimizer.broadcast_from_owners
    sharded_optimizer.broadcast_from_owners = _per_tensor_broadcast
    sharded_ema.broadcast_from_owners = _per_tensor_broadcast
    try:
        yield
    finally:
        sharded_optimizer.broadcast_from_owners = kept
        sharded_ema.broadcast_from_owners = kept


def mixed_model() -> torch.nn.Module:
    """Eleven trainable tensors of 1 to 480 elements in float64 and float32, and a frozen
    one: several tensors and both dtypes per owner at world 4."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(12, 40), torch.nn.Linear(40, 12), torch.nn.Linear(12, 7)]
    layers += [torch.nn.Linear(7, 5), torch.nn.Linear(5, 3), torch.nn.Linear(3, 1)]
    model = torch.nn.Sequential(*layers).double()
    model[1].float()
    model[3].float()
    model[0].bias.requires_grad_(False)
    return model


def bucketed_steps(bucket_bytes: int | None, steps: int) -> dict:
    """AdamW and an EMA, sharded, on :func:`mixed_model` with broadcasts in buckets of
    ``bucket_bytes`` (``None``: one broadcast per tensor, the reference). Every rank takes the
    same gradients. Returns the weights and EMA weights, the broadcasts each optimizer step and
    the EMA's ``copy_to`` made (bytes of each), and the owner, dtype and bytes of each
    trainable tensor, in the optimizer's order."""
    model = mixed_model()
    rank, world_size = world()
    partition = Partition.balanced(model.parameters(), rank=rank, world_size=world_size)
    buckets = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    optimizer = ShardedOptimizer(
        torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01),
        partition=partition,
        **buckets,
    )
    ema = ShardedEMA(model.parameters(), 0.5, partition=partition, **buckets)
    inputs = torch.randn(6, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    step_broadcasts, copy_broadcasts = [], []
    with per_tensor_broadcasts() if bucket_bytes is None else contextlib.nullcontext():
        for _ in range(steps):
            optimizer.zero_grad()
            x = inputs
            for layer in model:
                x = torch.tanh(layer(x.to(layer.weight.dtype)))
            x.square().sum().backward()
            with counted_broadcasts() as calls:
                optimizer.step()
            step_broadcasts.append(calls)
            ema.update()
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        ema.store()
        with counted_broadcasts() as calls:
            ema.copy_to()
        copy_broadcasts = calls
        averaged = {n: p.detach().clone() for n, p in model.named_parameters()}
        ema.restore()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "weights": weights,
        "ema": averaged,
        "restored": all(torch.equal(weights[n], p) for n, p in model.named_parameters()),
        "step_broadcasts": step_broadcasts,
        "copy_broadcasts": copy_broadcasts,
        "tensors": [(partition.owner(p), p.dtype, p.numel() * p.element_size()) for p in trainable],
    }


def file_mappings(path: str | os.PathLike) -> list[tuple[int, int]]:
    """The address ranges of this process mapped from the file at ``path``."""
    target = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == target:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def tensors_in(value) -> Iterator[torch.Tensor]:
    """Every tensor in a nest of dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)


def mapped_bytes(tensors: Iterable[torch.Tensor], path: str | os.PathLike) -> tuple[int, int]:
    """``(bytes lying in a mapping of path, bytes in all)`` of the tensors' storages, each
    storage counted once."""
    ranges = file_mappings(path)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    inside = sum(n for ptr, n in storages.items() if any(a <= ptr < b for a, b in ranges))
    return inside, sum(storages.values())


def anonymous_bytes() -> int:
    """This process's resident anonymous memory (heap and anonymous mappings, not files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def large_model() -> torch.nn.Module:
    """Eight 512 x 512 float32 layers: 8.4 MB of parameters, 34 MB of checkpoint with
    AdamW's state and an EMA."""
    torch.manual_seed(0)  # float32 whatever default dtype an earlier test left set
    return torch.nn.Sequential(*[torch.nn.Linear(512, 512, dtype=torch.float32) for _ in range(8)])


def write_large_checkpoint(path: str | os.PathLike) -> int:
    """fairchem's checkpoint layout (weights, optimizer and EMA state) for
    :func:`large_model` after one AdamW step; returns the file's size in bytes."""
    model = large_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    ema = ExponentialMovingAverage(model.parameters(), 0.5)
    model(torch.randn(4, 512, dtype=torch.float32)).square().sum().backward()
    optimizer.step()
    ema.update()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict(),
        },
        path,
    )
    return os.path.getsize(path)


def load_share_measured(path: str, *, rank: int, world_size: int) -> dict:
    """Rank ``rank`` of ``world_size`` loading :func:`write_large_checkpoint`'s file as
    ``ShardedModelState.load_checkpoint`` does (no process group needed: loading is local),
    in a fresh process. Returns the anonymous memory the read and the whole load added, the
    share of the checkpoint's tensor bytes that were mapped from the file, whether a kept
    tensor or any mapping outlived the load, the bytes of state this rank keeps, what a plain
    ``torch.load`` of the file adds, and whether the kept state equals the file's."""
    model = large_model()
    partition = Partition.balanced(model.parameters(), rank=rank, world_size=world_size)
    optimizer = ShardedOptimizer(torch.optim.AdamW(model.parameters()), partition=partition)
    ema = ShardedEMA(model.parameters(), 0.5, partition=partition)
    gc.collect()
    before = anonymous_bytes()
    checkpoint = read_checkpoint(path)
    read = anonymous_bytes() - before
    inside, total = mapped_bytes(tensors_in(checkpoint), path)
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    ema.load_state_dict(checkpoint["ema"])
    loaded = anonymous_bytes() - before
    kept = [*model.parameters(), *tensors_in(optimizer.local.state), *ema.shadow_params]
    kept_inside, _ = mapped_bytes(kept, path)
    del checkpoint
    gc.collect()
    still_mapped = bool(file_mappings(path))
    held = model_state_bytes(model=model, optimizer=optimizer, ema=ema)
    before = anonymous_bytes()
    plain = torch.load(path, map_location="cpu", weights_only=False)
    plain_read = anonymous_bytes() - before
    equal = _kept_state_equals(plain, model=model, optimizer=optimizer, ema=ema)
    return {
        "read": read,
        "loaded": loaded,
        "mapped_fraction": inside / total,
        "kept_in_file": kept_inside,
        "still_mapped": still_mapped,
        "kept": held.optimizer + held.ema,
        "owned_tensors": len(optimizer.local.state),
        "plain_read": plain_read,
        "equal": equal,
    }


def _kept_state_equals(checkpoint: dict, *, model, optimizer, ema) -> bool:
    """Whether the parameters and the state this rank keeps equal the checkpoint's."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    saved = checkpoint["optimizer"]["state"]
    optimizer_equal = all(
        torch.equal(value, saved[index[id(p)]][key])
        for p, state in optimizer.local.state.items()
        for key, value in state.items()
    )
    shadows = checkpoint["ema"]["shadow_params"]
    ema_equal = all(torch.equal(s, shadows[i]) for s, i in zip(ema.shadow_params, ema._mine))
    weights = checkpoint["state_dict"]
    weights_equal = all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    return optimizer_equal and ema_equal and weights_equal


def resume_mapped(run_dir: str, overrides: dict, checkpoint: str, batches: list[list[int]]) -> dict:
    """:func:`resume` from this rank's copy of ``checkpoint``, recording each ``torch.load``
    call's ``mmap``, whether the file is still mapped once loaded, and then truncating the copy
    in place before training on: a page still mapped would now fault (SIGBUS), and a load
    that kept any tensor of the file would change the steps."""
    copy = shutil.copy(checkpoint, os.path.join(run_dir, f"mapped_rank{world()[0]}.pt"))
    with default_dtype(torch.float64):
        trainer = _float64_trainer(run_dir, overrides)
        loads, load = [], torch.load

        def recording_load(*args, **kwargs):
            loads.append(kwargs.get("mmap"))
            return load(*args, **kwargs)

        torch.load = recording_load
        try:
            trainer.load_checkpoint(copy)
        finally:
            torch.load = load
        gc.collect()
        mapped_after = bool(file_mappings(copy))
        with open(copy, "r+b") as file:
            file.truncate(0)
        steps = [_step(trainer, _float64_batch(trainer, ids)) for ids in batches]
        return {
            "loads": loads,
            "mapped_after": mapped_after,
            "resumed_at": trainer.step - len(steps),
            "weights": _weights(trainer),
            "ema": _ema_weights(trainer),
        }
