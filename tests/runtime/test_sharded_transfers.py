"""What ZeRO-1 moves: updated parameters broadcast from their owners in flat buckets (bit for
bit the per-tensor broadcasts, one collective per bucket), and checkpoints read mapped from
the file, each rank copying only the state it keeps."""

from __future__ import annotations

import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from helpers.sharding_cases import bucketed_steps, load_share_measured, write_large_checkpoint

from ocp_graphpar.errors import UserFacingError
from ocp_graphpar.trainers.sharded_optimizer import plan_buckets
from ocp_graphpar.trainers.sharded_state import read_checkpoint, shard_bucket_bytes

STEPS = 3
#: Bucket caps in bytes: every tensor alone, some packed together, one bucket per owner and
#: dtype. ``None``: one broadcast per tensor, the reference.
BUCKET_BYTES = {"tiny": 1, "medium": 128, "huge": 2**30}


@pytest.fixture(scope="module")
def bucketed(gloo_world) -> dict:
    world = gloo_world(4)
    sizes = {"per_tensor": None, **BUCKET_BYTES}
    return {name: world.run(bucketed_steps, size, STEPS) for name, size in sizes.items()}


def test_bucketed_broadcasts_equal_per_tensor_ones_bit_for_bit(bucketed):
    """Weights after three AdamW steps and the EMA weights ``copy_to`` spreads, on every
    rank, for every bucket size: identical to one broadcast per tensor."""
    reference = bucketed["per_tensor"]
    for name in BUCKET_BYTES:
        for rank, result in enumerate(bucketed[name]):
            for key in ("weights", "ema"):
                expected = reference[rank][key]
                assert all(torch.equal(expected[n], w) for n, w in result[key].items()), (
                    name,
                    rank,
                    key,
                )
            assert result["restored"]
    first = reference[0]
    for result in reference[1:]:  # replicated: the ranks agree
        assert all(torch.equal(first["weights"][n], w) for n, w in result["weights"].items())
    assert any(not torch.equal(first["weights"][n], w) for n, w in first["ema"].items())


def expected_buckets(tensors: list[tuple[int, torch.dtype, int]], cap: int) -> int:
    """How many buckets filling each (owner, dtype) group in order up to ``cap`` bytes
    makes, a tensor over ``cap`` alone."""
    filled: dict[tuple[int, torch.dtype], int] = {}
    count = 0
    for owner, dtype, nbytes in tensors:
        held = filled.get((owner, dtype))
        if held is None or held + nbytes > cap:
            count, held = count + 1, 0
        filled[(owner, dtype)] = held + nbytes
    return count


def test_one_broadcast_per_bucket(bucketed):
    """Counted on every rank (a wrapped ``dist.broadcast``), per step and per ``copy_to``:
    one call per tensor with tiny buckets, one per owner and dtype with huge ones, in between
    with medium ones, each call within the cap unless one tensor exceeds it, every byte once."""
    tensors = bucketed["per_tensor"][0]["tensors"]
    owner_dtypes = len({(owner, dtype) for owner, dtype, _ in tensors})
    total = sum(nbytes for *_, nbytes in tensors)
    alone = {nbytes for *_, nbytes in tensors}  # the size of a call carrying one tensor
    assert 4 < owner_dtypes < len(tensors)  # several tensors and both dtypes on some owner
    counts = {"per_tensor": len(tensors), "tiny": len(tensors), "huge": owner_dtypes}
    counts["medium"] = expected_buckets(tensors, BUCKET_BYTES["medium"])
    assert owner_dtypes < counts["medium"] < len(tensors)
    for name, count in counts.items():
        cap = BUCKET_BYTES.get(name, 0)
        for result in bucketed[name]:
            for calls in [*result["step_broadcasts"], result["copy_broadcasts"]]:
                assert len(calls) == count, name
                assert sum(calls) == total
                assert all(size <= cap or size in alone for size in calls)


def test_plan_buckets_packs_one_owner_and_dtype_up_to_the_cap():
    sizes = [300, 10, 10, 80, 5, 200, 1, 1]
    dtypes = [torch.float32, torch.float32, torch.float64, torch.float32] * 2
    owners = [0, 0, 0, 1, 0, 0, 1, 0]
    tensors = [torch.zeros(n, dtype=d) for n, d in zip(sizes, dtypes)]
    buckets = plan_buckets(tensors, owners=owners, bucket_bytes=256)
    assert sorted(i for b in buckets for i in b.indices) == list(range(len(tensors)))
    for bucket in buckets:
        members = [tensors[i] for i in bucket.indices]
        assert list(bucket.indices) == sorted(bucket.indices)
        assert {owners[i] for i in bucket.indices} == {bucket.owner}
        assert len({t.dtype for t in members}) == 1
        assert bucket.numel == sum(t.numel() for t in members)
        nbytes = sum(t.numel() * t.element_size() for t in members)
        assert nbytes <= 256 or len(members) == 1
    assert (0,) in [b.indices for b in buckets]  # 1,200 bytes: a bucket of its own
    with pytest.raises(ValueError, match="positive"):
        plan_buckets(tensors, owners=owners, bucket_bytes=0)


def test_checkpoint_load_maps_the_file_and_copies_only_this_ranks_share(tmp_path):
    """Rank 1 of 4 loading a 34 MB checkpoint in a fresh process: reading it adds no
    anonymous memory (every tensor is mapped from the file) where ``torch.load`` without
    ``mmap`` adds the whole file; loading it into the model, optimizer and EMA adds only the
    state this rank keeps (about a quarter), as copies, equal to the file's; and no mapping
    of the file survives."""
    path = tmp_path / "large.pt"
    size = write_large_checkpoint(path)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        job = pool.submit(load_share_measured, str(path), rank=1, world_size=4)
        measured = job.result(timeout=300)
    assert measured["equal"] and measured["owned_tensors"] > 0
    assert measured["mapped_fraction"] == 1.0
    assert measured["read"] < 0.05 * size
    assert measured["plain_read"] > 0.9 * size  # the measure sees a whole read
    assert measured["kept"] < 0.35 * size
    assert measured["loaded"] < measured["kept"] + 0.05 * size
    assert measured["kept_in_file"] == 0 and not measured["still_mapped"]


def test_legacy_checkpoint_is_read_whole_with_a_reason(tmp_path, caplog):
    path = tmp_path / "legacy.pt"
    torch.save(
        {"state_dict": {"w": torch.arange(6.0)}, "step": 3},
        path,
        _use_new_zipfile_serialization=False,
    )
    with caplog.at_level(logging.WARNING):
        checkpoint = read_checkpoint(path)
    assert checkpoint["step"] == 3 and torch.equal(checkpoint["state_dict"]["w"], torch.arange(6.0))
    assert "legacy (non-zip) format, which cannot be memory-mapped" in caplog.text
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("optim", "expected"),
    [
        ({}, 25 * 2**20),
        ({"shard_bucket_mb": 50}, 50 * 2**20),
        ({"shard_bucket_mb": 0.5}, 2**19),
        ({"shard_bucket_mb": 1e-9}, 1),
    ],
)
def test_bucket_size_setting(optim, expected):
    assert shard_bucket_bytes(optim) == expected


@pytest.mark.parametrize("value", ["25", 0, -1, True, None, math.nan, math.inf])
def test_bad_bucket_sizes_are_user_facing_errors(value):
    with pytest.raises(UserFacingError, match="optim.shard_bucket_mb must be a positive number"):
        shard_bucket_bytes({"shard_bucket_mb": value})
