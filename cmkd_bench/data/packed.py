"""The packed store: a prepared folder's clips as fixed-shape, memory-mappable arrays, one set per split.

`cmkd-bench prepare` writes it beside the per-file layout (cmkd_bench/data/clips.py), which stays for
inspection and for prepare's resumability; the video datasets train from it by default when it
exists and matches the prepared clips (dataset option `store`: auto, packed or files).

    ROOT/packed/packed.json                 version, the clips' fingerprint, the frame size, splits, audio keys
    ROOT/packed/SPLIT-clips.csv             clip,label: the split's clips in clips.csv order (row r of every array)
    ROOT/packed/SPLIT-frames.npy            uint8 F x S x S x 3: every stored frame of the split's clips, resized
                                            to S x S (S a little above the training size, 256 for 224)
    ROOT/packed/SPLIT-frames-index.npy      int64 N x 4: first frame row, frame count, and the width and height
                                            of the stored JPEG frames (the crop box is drawn on those)
    ROOT/packed/SPLIT-audio-KEY.npy         float16 N x 1 x bins x width: the spectrogram of one audio recipe
                                            (KEY = protocol name and a hash of its settings)

Loading a batch is an index gather from the memory maps (`np.load(mmap_mode="r")`); the frame
crop, resize and flip run on the batch's device (cmkd_bench/data/gpu_augment.py), from boxes drawn per
sample from its `SampleSeed` exactly as the per-file path draws them. The whole store is written
into a temporary folder and renamed, so a store is complete or absent.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..artefacts.files import write_json_atomic
from ..distributed import shard
from .checksums import DERIVED_FOLDER
from .clips import PreparedClips, clips_fingerprint, frame_file
from .loading import PersistentLoader, batch_buffer_or
from .media import read_image
from .spec import DecodedPairs, DatasetSpec, augments

PACKED_DIR, PACKED_JSON, PACKED_VERSION = DERIVED_FOLDER, "packed.json", 1
HOST_KEYS = ("crops", "flips")  # batch values the device part reads on the host


def packed_size(image_size: int) -> int:
    """The stored frame side for a training size: 8/7 of it (256 px for 224), as ImageNet's resize-then-crop."""
    return int(math.ceil(image_size * 8 / 7))


def audio_key(protocol: str, recipe: Any) -> str:
    """Names one audio recipe's spectrograms: the protocol and a hash of every setting (repr of the dataclass)."""
    return f"{protocol}-{hashlib.sha256(repr(recipe).encode()).hexdigest()[:10]}"


def read_packed_info(root: Path) -> dict | None:
    """packed.json of a store that serves the prepared clips (made from their recorded content), or None."""
    return inspect_packed(root)[0]


def inspect_packed(root: Path) -> tuple[dict | None, str | None]:
    """(packed.json, None) where the store serves the prepared clips; (None, None) where there is no
    store; (None, why) where a store is there but does not serve them (so `store=auto` can say so)."""
    path = root / PACKED_DIR / PACKED_JSON
    if not path.exists():
        return None, None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, f"{path} cannot be read"
    if not isinstance(info, dict) or info.get("version") != PACKED_VERSION:
        return None, f"it was packed in another store format (version {info.get('version') if isinstance(info, dict) else '?'}, " \
                     f"this is {PACKED_VERSION})"
    if info.get("clips") != clips_fingerprint(root):
        return None, "it was packed from other prepared content than the folder now holds"
    return info, None


def _frame_pixels(root: Path, clip: str, index: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    image = read_image(frame_file(root, clip, index))
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8), image.size


def write_packed(clips: PreparedClips, size: int, spectrograms: dict[str, Callable[[int], np.ndarray]],
                 advance: Callable[[], None] = lambda: None) -> dict:
    """Pack every split of `clips` (frames at size x size, one spectrogram array per key); returns packed.json.

    `spectrograms[key](row)` gives the 1 x bins x width spectrogram of clips.csv row `row`. Reads
    the stored JPEG frames and waveforms only: no video is decoded again.
    """
    root = clips.root
    final, tmp = root / PACKED_DIR, root / f"{PACKED_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    splits: dict[str, int] = {}
    audio_shapes: dict[str, list[int]] = {}
    for split in ("train", "val", "test"):
        rows = np.flatnonzero(clips.splits == split)
        if len(rows) == 0:
            continue
        splits[split] = len(rows)
        with open(tmp / f"{split}-clips.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("clip", "label"))
            writer.writerows((clips.names[r], int(clips.labels[r])) for r in rows)
        counts = clips.frame_counts[rows]
        frames = np.lib.format.open_memmap(tmp / f"{split}-frames.npy", mode="w+", dtype=np.uint8,
                                           shape=(int(counts.sum()), size, size, 3))
        index = np.zeros((len(rows), 4), dtype=np.int64)
        audio = {}
        offset = 0
        for i, r in enumerate(rows):
            width = height = 0
            for k in range(int(counts[i])):
                frames[offset + k], (width, height) = _frame_pixels(root, clips.names[r], k, size)
            index[i] = (offset, counts[i], width, height)
            offset += int(counts[i])
            for key, compute in spectrograms.items():
                value = compute(int(r))
                if key not in audio:
                    audio[key] = np.lib.format.open_memmap(tmp / f"{split}-audio-{key}.npy", mode="w+",
                                                           dtype=np.float16, shape=(len(rows), *value.shape))
                    audio_shapes[key] = list(value.shape)
                audio[key][i] = value
            advance()
        frames.flush()
        del frames
        for array in audio.values():
            array.flush()
        np.save(tmp / f"{split}-frames-index.npy", index)
    info = {"version": PACKED_VERSION, "clips": clips_fingerprint(root), "size": size, "splits": splits,
            "audio": audio_shapes}
    write_json_atomic(info, tmp / PACKED_JSON)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return info


class PackedSplit:
    """One split's arrays, memory-mapped on first use (each DataLoader worker maps its own)."""

    def __init__(self, root: Path, split: str, audio: str) -> None:
        self.folder, self.split, self.audio_key = root / PACKED_DIR, split, audio
        self.index = np.load(self.folder / f"{split}-frames-index.npy")
        self.side = int(np.load(self.folder / f"{split}-frames.npy", mmap_mode="r").shape[1])
        self.audio_shape = tuple(np.load(self.folder / f"{split}-audio-{audio}.npy", mmap_mode="r").shape[1:])
        self._maps: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        """The frames and spectrograms, memory-mapped (as plain ndarray views: indexing a memmap costs more)."""
        if self._maps is None:
            self._maps = (np.asarray(np.load(self.folder / f"{self.split}-frames.npy", mmap_mode="r")),
                          np.asarray(np.load(self.folder / f"{self.split}-audio-{self.audio_key}.npy", mmap_mode="r")))
        return self._maps

    def gather(self, frame_rows: np.ndarray, rows: np.ndarray, frames_out: Tensor | None = None,
               audio_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """uint8 frames at `frame_rows` (any shape) and float16 spectrograms at `rows`, as batch
        buffers or into `frames_out` / `audio_out` where given (tensors of those shapes).

        Each array's rows are copied once, straight into the batch, in file order (a sorted gather
        reads the file front to back)."""
        frames, audio = self.maps()
        flat = frame_rows.ravel()
        picked = batch_buffer_or(frames_out, (*frame_rows.shape, *frames.shape[1:]), torch.uint8)
        _copy_rows(frames, flat, picked.view(len(flat), *frames.shape[1:]).numpy())
        spectrograms = batch_buffer_or(audio_out, (len(rows), *audio.shape[1:]), torch.float16)
        _copy_rows(audio, np.asarray(rows), spectrograms.numpy())
        return picked, spectrograms


def _copy_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = source[rows[i]] for every i, reading `source` in row order."""
    for i in np.argsort(rows, kind="stable").tolist():
        out[i] = source[rows[i]]


class PackedPairs(DecodedPairs):
    """A `DecodedPairs` whose readers gather whole batches from a packed store.

    Each reader has `fetch((seed or None, indices, crop_here))`, the CPU part run in the split's
    persistent DataLoader workers (the per-sample draws and the memory-map gather; for a CPU batch
    the crop too, so the workers share it), and `finish(batch, device)`, the device part (crop,
    resize, flip, dtype). Batch order and the drop-last rule are
    DecodedPairs'.
    """

    def __init__(self, spec: DatasetSpec, readers: dict[str, Any], num_workers: int = 0) -> None:
        super().__init__(spec, readers, num_workers)

    def _loader(self, split: str, pin: bool) -> PersistentLoader:
        if (split, pin) not in self._loaders:
            self._loaders[(split, pin)] = PersistentLoader(self.readers[split].fetch, self.num_workers, pin)
        return self._loaders[(split, pin)]

    def batches(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                device: torch.device | str = "cpu", part: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Tensor]]:
        """As DecodedPairs' (the same order, drop-last rule and torchrun `part` of each batch); crops and
        flips stay on the host (no sync)."""
        device = torch.device(device)
        n = self.size(split)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        count = self.num_batches(split, batch_size, shuffle=shuffle)
        seed_or_none = seed if augments(split, shuffle) else None
        crop_here = device.type == "cpu"  # a CPU batch is cropped where it is gathered (in the workers)
        chunks = [chunk for b in range(count)
                  if (chunk := shard(order[b * batch_size:(b + 1) * batch_size], part).tolist())]
        items = [(seed_or_none, chunk, crop_here) for chunk in chunks]
        reader, pin = self.readers[split], device.type == "cuda"
        rows = max((len(chunk) for chunk in chunks), default=1)  # the slots hold the largest part; fetch fills a prefix
        # finish() copies every slot value out (normalising, or from pinned memory) before the next batch is asked for
        for batch in self._loader(split, pin).iterate(items, reader.layout(rows, crop_here)):
            moved = {k: v if k in HOST_KEYS else v.to(device, non_blocking=pin) for k, v in batch.items()}
            yield reader.finish(moved, device)
