"""The video datasets' packed-store side: which readers serve from it, and how `prepare` packs.

`packed_readers` wraps each split's `ClipReader` (its protocol's frame choice and crop draws) in a
`PackedClipReader` that gathers the chosen frames and the spectrogram from the packed store
(cmkd_bench/data/packed.py) instead of decoding JPEGs and computing spectrograms; the crop, resize and
flip run on the batch's device (cmkd_bench/data/gpu_augment.py). Every random choice is drawn from the
sample's `SampleSeed` in the order ClipReader draws it (frames, then box, then flip), so a sample's
augmentation is the per-file path's, whichever worker gathers it.

`prepare` packs each protocol's default audio recipe. A protocol whose audio window is random at
train (VGGSound's c2kd) has no fixed spectrogram per clip and is not packed: it reads the files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from cmkd_bench.data import SampleSeed
from cmkd_bench.data.clips import audio_file, read_info, read_prepared
from cmkd_bench.data.gpu_augment import crop_resize, crop_resize_flip, normalised, stored_box
from cmkd_bench.data.loading import batch_buffer
from cmkd_bench.data.media import load_npy
from cmkd_bench.data.packed import PackedSplit, audio_key, inspect_packed, read_packed_info, write_packed
from cmkd_bench.distributed import world
from cmkd_bench.errors import UserError

STORES = ("auto", "packed", "files")


def note(line: str) -> None:
    """One line on stderr, from rank 0 only under torchrun (every rank builds the dataset)."""
    if world().rank == 0:
        print(line, file=sys.stderr, flush=True)


class PackedClipReader:
    """One split served from the packed store: `fetch` (CPU, in workers) and `finish` (on the device)."""

    def __init__(self, clips, store: PackedSplit, rows: np.ndarray) -> None:
        self.clips, self.store, self.rows = clips, store, rows  # rows: the split's positions in the store split
        self.labels = clips.labels

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fixed_modalities(self) -> frozenset[str]:
        return self.clips.fixed_modalities

    def layout(self, batch_size: int, crop_here: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of a batch's large values (what `fetch` can write into shared buffers)."""
        frames = ((batch_size, self.clips.image_size, self.clips.image_size, self.clips.frames, 3) if crop_here
                  else (batch_size, self.clips.frames, self.store.side, self.store.side, 3))
        return {"frames": (frames, torch.uint8), "audio": ((batch_size, *self.store.audio_shape), torch.float16)}

    def fetch(self, item: tuple[int | None, list[int], bool], out: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The batch's draws and gather; with `crop_here` (a CPU batch) the crop too, so workers share it.
        Frames (cropped or not) and spectrograms go into `out`'s leading rows where given (`layout`)."""
        seed, indices, crop_here = item
        n, frames = len(indices), self.clips.frames
        frame_rows = np.empty((n, frames), dtype=np.int64)
        crops, flips = np.empty((n, 4), np.int64), np.zeros(n, bool)
        for j, index in enumerate(indices):
            rng = None if seed is None else SampleSeed(seed, index).rng()
            offset, _, width, height = (int(v) for v in self.store.index[self.rows[index]])
            frame_rows[j] = offset + np.asarray(self.clips.frame_choice(index, rng))
            box, flips[j] = self.clips.crop_choice(rng, width, height)
            crops[j] = stored_box(box if box is not None else (0, 0, width, height), width, height, self.store.side)
        into = {} if out is None else {name: value[:n] for name, value in out.items()}
        pixels, audio = self.store.gather(frame_rows, self.rows[np.asarray(indices)],
                                          None if crop_here else into.get("frames"), into.get("audio"))
        view = {"crops": torch.from_numpy(crops), "flips": torch.from_numpy(flips)}
        if crop_here:  # uint8 out of the worker (a quarter of float32's bytes); normalised where it is used
            view = {"cropped": crop_resize(pixels, crops.tolist(), flips.tolist(), self.clips.image_size,
                                           into.get("frames"))}
        else:
            view["frames"] = pixels
        return {**view, "audio": audio,
                "label": torch.as_tensor(self.labels[indices], dtype=torch.long),
                "index": torch.as_tensor(indices, dtype=torch.long)}

    def finish(self, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        visual = normalised(batch["cropped"]) if "cropped" in batch else crop_resize_flip(
            batch["frames"], batch["crops"].tolist(), batch["flips"].tolist(), self.clips.image_size)
        audio = batch["audio"]
        spectrograms = batch_buffer(audio.shape, torch.float32, audio.device).copy_(audio)
        return {"visual": visual, "audio": spectrograms, "label": batch["label"], "index": batch["index"]}


def packed_readers(name: str, clips, positions: dict[str, np.ndarray], readers: dict, protocol: str, audio,
                   store: str) -> dict[str, PackedClipReader] | None:
    """The packed readers of each split, or None where the files are read (`store` files, or auto without a store)."""
    if store not in STORES:
        raise UserError(f"{name}: store must be one of {', '.join(STORES)}, got {store!r}")
    if store == "files":
        return None
    if audio.window == "random":  # drawn anew per sample, at test too: a store of spectrograms cannot hold it
        if store == "packed":
            raise UserError(f"{name}: --set store=packed, but protocol {protocol!r} draws its audio window at random "
                            f"for every sample, which a packed store of spectrograms cannot hold; use store=files")
        return None
    info, unusable = inspect_packed(clips.root)
    key = audio_key(protocol, audio)
    image_size = readers["train"].image_size
    hint = f"run `cmkd-bench prepare {name} --dst {clips.root} --pack-only`, or --set store=files"
    problem = None
    if info is None:
        problem = (f"{str(clips.root)!r} has no packed store" if unusable is None else
                   f"the packed store in {str(clips.root)!r} does not serve: {unusable}")
    elif key not in info["audio"]:
        problem = f"its packed store holds no spectrograms of protocol {protocol!r} with these settings"
    elif info["size"] < image_size:
        problem = f"its packed frames are {info['size']} px, smaller than image_size {image_size}"
    if problem is not None:
        if store == "packed":
            raise UserError(f"{name}: --set store=packed, but {problem}; {hint}")
        if info is not None or unusable is not None:  # a store is there: say once why it is not read
            note(f"note: {name}: {problem}; reading the prepared JPEG frames instead (several times slower); "
                 f"to use the store, {hint.removesuffix(', or --set store=files')}")
        return None
    where = {}  # clips.csv row -> (store split, row in it)
    for split in info["splits"]:
        for i, r in enumerate(np.flatnonzero(clips.splits == split)):
            where[int(r)] = (split, i)
    packed = {}
    for split, rows in positions.items():
        held = {where[int(r)][0] for r in rows}
        if len(held) != 1:
            raise UserError(f"{name}: the packed store's splits do not match the prepared clips; {hint}")
        store_split = held.pop()
        packed[split] = PackedClipReader(readers[split], PackedSplit(clips.root, store_split, key),
                                         np.asarray([where[int(r)][1] for r in rows], dtype=np.int64))
    return packed


@dataclass(frozen=True)
class Packer:
    """`prepare`'s packing step for one video dataset: frames at `size` and each protocol's spectrograms."""

    dataset: str
    protocols: dict

    def __call__(self, root: Path, size: int, advance: Callable[[], None] = lambda: None) -> dict:
        clips = read_prepared(self.dataset, root, len(read_info(root, self.dataset).get("classes", [])))
        stored_rate = int(clips.info.get("audio", {}).get("rate", 0))

        def spectrogram(recipe) -> Callable[[int], np.ndarray]:
            def compute(row: int) -> np.ndarray:
                start, end = clips.segments[row]
                segment = None if np.isnan(start) else (float(start), float(end))
                wave = load_npy(audio_file(root, clips.names[row]))
                return recipe.spectrogram(wave, stored_rate, segment, None)[None]
            return compute

        recipes = {audio_key(name, p.audio): spectrogram(p.audio) for name, p in self.protocols.items()
                   if p.audio.window != "random"}
        current = read_packed_info(root)
        if current is not None and current["size"] == size and set(current["audio"]) == set(recipes):
            return current  # already packed from these clips (a resumed prepare)
        return write_packed(clips, size, recipes, advance)
