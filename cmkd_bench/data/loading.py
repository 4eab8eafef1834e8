"""One DataLoader per split that lives with the dataset: persistent workers, pinned memory, prefetch.

`batches()` used to build a DataLoader, and start its worker processes, every epoch. A
`PersistentLoader` is built once per (split, pinning) and iterated every epoch: its sampler is
replaced by the epoch's list of batch descriptions (the seed and the sample indices of each
batch), and the workers, started on the first epoch, stay. A worker turns one description into
one collated batch (`fetch`), so nothing a worker computes depends on which worker it is or on how
many there are: the batch order and each sample's augmentation come from the description alone.

Iterating a loader while an earlier iteration of the same loader is still open (a generator not
yet exhausted) would reset it; the second iteration then fetches in this process instead.

Batches of a known shape can come back through shared slots (`iterate(items, layout)`): instead of
a worker returning fresh tensors, which torch copies into a new shared-memory segment that this
process then maps (the kernel zeroes and maps every 4 KiB page twice, about 0.17 ms a MiB here,
and a 64-clip video batch is 19 MiB), the worker writes into one of a few shared buffers made once
and returns views of it, which arrive as views of the same memory (torch's sharing cache finds
the storage both sides already hold: no copy, no new mapping).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import UserError


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised tensor for a whole batch on `device`; on the CPU its memory is numpy's, and recycled.

    A batch buffer is wanted afresh every batch (a 64 x 3 x 224 x 224 float32 batch is 38.5 MiB),
    and fresh memory costs: the kernel maps its pages in, zeroed, on first write. On the CPU a
    buffer of `POOL_MIN_BYTES` and more comes from a small pool of numpy arrays per shape and
    dtype, and one is handed out again only once nothing else refers to it (the tensors made from
    it, views included, hold the array; `sys.getrefcount` says when the last is gone), so a
    training loop's batches reuse two or three mapped buffers instead of mapping 38.5 MiB each.
    A buffer still held (a batch kept in a list, one queued in a worker) is never handed out: a
    new one is made, pooled while the pool has room. numpy also asks for transparent huge pages
    on arrays of 4 MiB and more (madvise; PyTorch's CPU allocator asks only under
    THP_MEM_ALLOC_ENABLE=1), so a new buffer maps in about 20 faults of 2 MiB instead of 9,400 of
    4 KiB. The values are whatever is written into it; nothing else differs from `torch.empty`.
    On other devices: `torch.empty` (the caching allocator already recycles).
    """
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return torch.from_numpy(np.empty(shape, dtype=np_dtype))
    key = (tuple(shape), np_dtype.str)
    with _POOL_LOCK:
        pooled = _POOL.setdefault(key, [])
        for array, refs in zip(pooled, _refcounts(pooled)):
            if refs == _FREE_REFS:
                return torch.from_numpy(array)
        array = np.empty(shape, dtype=np_dtype)
        if len(pooled) < POOL_PER_SHAPE and _pooled_bytes() + nbytes <= POOL_MAX_BYTES:
            pooled.append(array)
    return torch.from_numpy(array)


def batch_buffer_or(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """`out` where the caller gave one (checked to be of that shape and dtype), else a new `batch_buffer`."""
    if out is None:
        return batch_buffer(shape, dtype, device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out is {out.dtype} {tuple(out.shape)}, expected {dtype} {tuple(shape)}")
    return out


POOL_MIN_BYTES, POOL_PER_SHAPE, POOL_MAX_BYTES = 1 << 20, 4, 1 << 30
_POOL: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
_POOL_LOCK = threading.Lock()


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    counts = []
    for array in arrays:
        counts.append(sys.getrefcount(array))
    return counts


_FREE_REFS = _refcounts([np.empty(0)])[0]  # an array only a list holds (measured, not assumed per Python version)


def _pooled_bytes() -> int:
    return sum(a.nbytes for arrays in _POOL.values() for a in arrays)


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers gather and decode; intra-op threads would only contend


class _Items(torch.utils.data.Sampler):
    """The current epoch's batch descriptions, replaced before each epoch."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # name -> (shape, dtype) of one batch's shared buffers


class _Into:
    """An item with the shared buffers its batch is to be written into (slot `key` of one layout)."""

    def __init__(self, item: Any, key: tuple[int, int], out: dict[str, torch.Tensor]) -> None:
        self.item, self.key, self.out = item, key, out


class _Fetch(torch.utils.data.Dataset):
    def __init__(self, fetch: Callable[..., Any]) -> None:
        self.fetch = fetch
        self.held: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, _Into):
            # Holding the slot keeps its storage in this worker's sharing cache: the next item that
            # brings it is rebuilt from the cache, not mapped again.
            self.held[item.key] = item.out
            return self.fetch(item.item, out=item.out)
        return self.fetch(item)


def _as_is(batch: Any) -> Any:
    return batch


def _pinned(batch: Any) -> Any:
    """A fetched batch's tensors in pinned memory (what the DataLoader's pin_memory does with workers)."""
    if isinstance(batch, dict):
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def worker_limit(num_workers: int) -> int:
    """`num_workers`, at most CMKD_BENCH_WORKERS where a suite sets it (its runs' share of the cores)."""
    limit = os.environ.get("CMKD_BENCH_WORKERS", "")
    return min(num_workers, int(limit)) if limit.isdigit() else num_workers


SHARED_MEMORY = Path("/dev/shm")


def shared_memory_free() -> int | None:
    """Free bytes of the shared-memory filesystem torch's worker tensors live in; None where there is none."""
    try:
        return shutil.disk_usage(SHARED_MEMORY).free
    except OSError:
        return None


class PersistentLoader:
    """`iterate(items)` yields fetch(item) for each item, from persistent worker processes (0: here):
    `num_workers`, at most the suite's cap (`worker_limit`)."""

    def __init__(self, fetch: Callable[..., Any], num_workers: int, pin_memory: bool, prefetch: int = 4) -> None:
        num_workers = worker_limit(num_workers)
        self.fetch, self.num_workers, self.pin_memory, self.busy = fetch, num_workers, pin_memory, False
        self.prefetch = prefetch
        self.slots: dict[tuple, list[dict[str, torch.Tensor]]] = {}
        self.sampler = _Items()
        self.loader = torch.utils.data.DataLoader(
            _Fetch(fetch), sampler=self.sampler, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0,
            prefetch_factor=prefetch if num_workers > 0 else None,
            worker_init_fn=_single_thread if num_workers > 0 else None)

    def iterate(self, items: list[Any], layout: Layout | None = None) -> Iterator[Any]:
        """fetch(item) for each item, in order.

        With a `layout` and workers, batch b is fetched as fetch(item, out=buffers) into the shared
        buffers of slot b mod (prefetch x workers + 1), each of the layout's shape (a smaller batch
        writes a leading part), and what comes back may be views of them. The caller must be done
        with a batch's views (have copied what it keeps) when it asks for the next batch: torch's
        DataLoader keeps at most prefetch x workers batches dispatched and not yet returned and
        dispatches one more per batch it returns, so batch b + prefetch x workers + 1, the next to
        write slot b's buffers, is dispatched only when batch b + 1 is returned. (A pinning loader
        copies each batch into pinned memory as it arrives, before that.) Without workers or a
        layout, fetch(item), into its own buffers."""
        if self.busy or self.num_workers == 0:  # nested, or no workers: fetch here
            for item in items:
                batch = self.fetch(item)
                yield _pinned(batch) if self.pin_memory else batch
            return
        self.busy = True
        try:
            if layout is not None:
                slots, which = self._slots(layout, len(items))
                items = [_Into(item, (which, b % len(slots)), slots[b % len(slots)]) for b, item in enumerate(items)]
            self.sampler.items = list(items)
            yield from self.loader
        finally:
            self.busy = False

    def _slots(self, layout: Layout, batches: int) -> tuple[list[dict[str, torch.Tensor]], int]:
        """The layout's shared buffers (made on first use, kept with the loader, grown when an
        iteration has more batches) and the layout's number. prefetch x workers + 1 are needed at
        most (see `iterate`), fewer when the iteration has fewer batches (a short evaluation split)."""
        key = tuple((name, tuple(shape), dtype) for name, (shape, dtype) in sorted(layout.items()))
        slots = self.slots.setdefault(key, [])
        count = min(self.prefetch * self.num_workers + 1, max(1, batches))
        if len(slots) < count:
            _check_shared_memory(layout, count - len(slots), self.num_workers, self.prefetch)
            slots += [{name: torch.empty(shape, dtype=dtype).share_memory_() for name, (shape, dtype) in layout.items()}
                      for _ in range(count - len(slots))]
        return slots, list(self.slots).index(key)


def _check_shared_memory(layout: Layout, count: int, workers: int, prefetch: int) -> None:
    """One line, before allocating, where /dev/shm cannot hold the slots (torch would die with a bus
    error or 'unable to write to file' midway instead)."""
    per_batch = sum(int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
                    for shape, dtype in layout.values())
    free = shared_memory_free()
    if free is not None and per_batch * count > free:
        mib = 1 << 20
        raise UserError(f"the data loader needs {per_batch * count / mib:.0f} MiB of shared memory ({count} batch "
                        f"buffers of {per_batch / mib:.1f} MiB: {workers} worker(s) x prefetch {prefetch} + 1) but "
                        f"{SHARED_MEMORY} has {free / mib:.0f} MiB free; use fewer workers (--set num_workers=N), "
                        f"a smaller batch, or a larger {SHARED_MEMORY} (docker run --shm-size=8g)")
