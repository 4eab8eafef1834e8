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

from typing import Any, Callable, Iterator

import numpy as np
import torch


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised tensor for a whole batch on `device`; on the CPU its memory is allocated by numpy.

    A batch buffer is made afresh every batch (a 64 x 3 x 224 x 224 float32 batch is 38.5 MiB), and
    the kernel maps its pages in on first write. numpy asks for transparent huge pages on arrays of
    4 MiB and more (madvise), so such a buffer is mapped in about 20 faults of 2 MiB; PyTorch's CPU
    allocator asks only under THP_MEM_ALLOC_ENABLE=1, so its buffer takes one fault per 4 KiB page
    (9,400 here), which on these machines costs about as much as the conversion that fills it.
    The values are whatever is written into it; nothing else differs from `torch.empty`.
    """
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))


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
