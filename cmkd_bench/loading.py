"""One DataLoader per split that lives with the dataset: persistent workers, pinned memory, prefetch.

`batches()` used to build a DataLoader, and start its worker processes, every epoch. A
`PersistentLoader` is built once per (split, pinning) and iterated every epoch: its sampler is
replaced by the epoch's list of batch descriptions (the seed and the sample indices of each
batch), and the workers, started on the first epoch, stay. A worker turns one description into
one collated batch (`fetch`), so nothing a worker computes depends on which worker it is or on how
many there are: the batch order and each sample's augmentation come from the description alone.

Iterating a loader while an earlier iteration of the same loader is still open (a generator not
yet exhausted) would reset it; the second iteration then fetches in this process instead.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch


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


class _Fetch(torch.utils.data.Dataset):
    def __init__(self, fetch: Callable[[Any], Any]) -> None:
        self.fetch = fetch

    def __getitem__(self, item: Any) -> Any:
        return self.fetch(item)


def _as_is(batch: Any) -> Any:
    return batch


def _pinned(batch: Any) -> Any:
    """A fetched batch's tensors in pinned memory (what the DataLoader's pin_memory does with workers)."""
    if isinstance(batch, dict):
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


class PersistentLoader:
    """`iterate(items)` yields fetch(item) for each item, from `num_workers` persistent processes (0: here)."""

    def __init__(self, fetch: Callable[[Any], Any], num_workers: int, pin_memory: bool, prefetch: int = 4) -> None:
        self.fetch, self.num_workers, self.pin_memory, self.busy = fetch, num_workers, pin_memory, False
        self.sampler = _Items()
        self.loader = torch.utils.data.DataLoader(
            _Fetch(fetch), sampler=self.sampler, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0,
            prefetch_factor=prefetch if num_workers > 0 else None,
            worker_init_fn=_single_thread if num_workers > 0 else None)

    def iterate(self, items: list[Any]) -> Iterator[Any]:
        if self.busy or self.num_workers == 0:  # nested, or no workers: fetch here
            for item in items:
                batch = self.fetch(item)
                yield _pinned(batch) if self.pin_memory else batch
            return
        self.busy = True
        try:
            self.sampler.items = list(items)
            yield from self.loader
        finally:
            self.busy = False
