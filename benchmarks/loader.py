"""Input throughput of a real video dataset: the per-file path against the packed store, side by side.

    python benchmarks/loader.py [--clips 2000] [--batch-size 64] [--workers 0,1,2] [--seconds 10]

Generates a CREMA-D-shaped prepared folder (what `cmkd-bench prepare crema-d` writes: 3 stored
JPEG frames per clip at 341 x 256, shorter side 256 like CREMA-D's 480 x 360 video; a 16 kHz
waveform of 2.5 s), packs it (timed apart, a one-time cost of `prepare`), then reads shuffled,
augmented training batches of crema-d's default protocol (fd-cmkd: a random frame of the clip,
RandomResizedCrop + flip to 3 x 224 x 224, a 1 x 257 x 299 log spectrogram) through the
per-file path (`--set store=files`: JPEG decode, crop and resize with PIL, the spectrogram from
the waveform, per sample in DataLoader workers) and through the packed path (an index gather from
the memory-mapped store; crop, resize and flip of the whole batch on the device, here the CPU),
with each worker count, over whole epochs for at least `--seconds` (10; the first batch, worker
start-up, not timed).
Prints samples/s of each and the ratio packed / per-file at equal workers. Target on 2 CPU cores:
>= 10 x.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cmkd_bench.catalog import load_all
from cmkd_bench.data.clips import CLIPS_CSV, INFO_JSON, LAYOUT_VERSION, audio_file, frame_file, read_prepared
from cmkd_bench.data.packed import audio_key, packed_size, write_packed
from cmkd_bench.datasets.crema_d import CLASSES, DEFAULT_PROTOCOL, PROTOCOLS, STORED_RATE
from cmkd_bench.registry import DATASETS

FRAMES, WIDTH, HEIGHT, SECONDS = 3, 341, 256, 2.5


def generate(root: Path, clips: int, seed: int = 0) -> None:
    """A prepared crema-d folder of `clips` clips with smooth random frames and noise waveforms."""
    rng = np.random.default_rng(seed)
    rows = []
    base = np.stack(np.meshgrid(np.linspace(0, 1, WIDTH), np.linspace(0, 1, HEIGHT)), -1)
    for i in range(clips):
        name = f"clip{i:05d}"
        label = i % len(CLASSES)
        for k in range(FRAMES):
            colour = rng.uniform(0, 255, size=3)
            pixels = (base[..., :1] * colour + base[..., 1:] * (255 - colour)).clip(0, 255).astype(np.uint8)
            path = frame_file(root, name, k)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=95)
        wave = rng.normal(0, 0.1, int(SECONDS * STORED_RATE)).astype(np.float32)
        audio_file(root, name).parent.mkdir(parents=True, exist_ok=True)
        np.save(audio_file(root, name), wave)
        rows.append((name, label, "test" if i % 10 == 0 else "train", FRAMES, "", ""))
    with open(root / CLIPS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("clip", "label", "split", "frames", "start", "end"))
        writer.writerows(rows)
    (root / INFO_JSON).write_text(json.dumps({"dataset": "crema-d", "layout": LAYOUT_VERSION, "classes": list(CLASSES),
                                              "audio": {"stored": "waveform", "rate": STORED_RATE}, "clips": clips}))


def samples_per_second(root: Path, store: str, workers: int, batch_size: int, seconds: float) -> float:
    """Samples/s over whole shuffled epochs (a new seed each), as many as take `seconds` at least,
    from the first batch of the first (worker start-up) to the end of the last; each epoch's start
    after the first is counted, as training pays it. Epochs are read to their end: a loop broken
    early would leave prefetched batches that the next epoch's start waits for, work no training
    run does."""
    data = DATASETS.build("crema-d", root, store=store, num_workers=workers)
    assert data.spec.options["store"] == store
    seen, began, epoch = 0, None, 0
    while began is None or time.perf_counter() - began < seconds:
        for batch in data.batches("train", batch_size, shuffle=True, seed=epoch):
            if began is None:
                began = time.perf_counter()
                continue
            seen += len(batch["label"])
        epoch += 1
    return seen / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--seconds", type=float, default=10.0, help="read whole epochs for at least this long")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_all()
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        generate(root, args.clips)
        generated = time.perf_counter() - began
        clips = read_prepared("crema-d", root, len(CLASSES))
        recipe = PROTOCOLS[DEFAULT_PROTOCOL].audio
        from cmkd_bench.datasets._av_common import load_npy

        began = time.perf_counter()
        write_packed(clips, packed_size(224), {audio_key(DEFAULT_PROTOCOL, recipe): lambda row: recipe.spectrogram(
            load_npy(audio_file(root, clips.names[row])), STORED_RATE, None, None)[None]})
        packing = time.perf_counter() - began
        rates = {(store, w): samples_per_second(root, store, w, args.batch_size, args.seconds)
                 for w in workers for store in ("files", "packed")}
    print(f"CREMA-D-shaped data: {args.clips} clips (generated in {generated:.0f} s, packed in {packing:.0f} s), "
          f"batch {args.batch_size}, shuffled augmented train batches (whole epochs, {args.seconds:g} s at least), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s) in the main process; measured by `python benchmarks/loader.py`")
    print()
    print("| workers | per-file samples/s | packed samples/s | packed / per-file |")
    print("|---:|---:|---:|---:|")
    for w in workers:
        files, packed = rates[("files", w)], rates[("packed", w)]
        print(f"| {w} | {files:.0f} | {packed:.0f} | {packed / files:.1f} x |")


if __name__ == "__main__":
    main()
