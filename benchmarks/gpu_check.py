"""The GPU check: one short call on a GPU machine that measures what a CPU cannot, in one table.

    python benchmarks/gpu_check.py [--device cuda:0] [--small] [--skip-tests]      (or `make gpu-check`)

Installs nothing and downloads nothing. In order:
1. the `gpu`-marked tests (`pytest -m gpu`; skipped where there is no CUDA device);
2. steps/s of a kd run on synth-av and on synth-rgbd (default backbones), from their run records;
3. a ResNet-18 audio-visual kd step at CREMA-D's shapes (student on 3 x 224 x 224 frames, teacher
   on 1 x 257 x 299 spectrograms, batch 64, bf16 autocast on CUDA): steps/s with the batch resident
   on the device, and with batches from the packed loader (a generated CREMA-D-shaped packed store,
   crop and flip on the device); their ratio is how close input comes to the compute limit (target
   >= 0.9); then the resident step with both networks compiled (`--compile`), against eager;
4. runs/minute of a tiny suite (no-kd on synth-av, one run per seed) at --jobs 1, 4 and 8 on one device.

Without CUDA it runs the same steps at small sizes (`--small`: tiny data, a 64 px frame, batch 4,
one timed step, suites of 2 runs at --jobs 1 and 2, and no compile: inductor's compilation alone
takes minutes of CPU), so CI keeps it working (tests/test_gpu_check.py); its numbers then say
nothing about a GPU. Every figure is measured in this one process, side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def gpu_tests() -> str:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                            cwd=REPO, capture_output=True, text=True)
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else f"exit code {result.returncode}"
    return summary.strip("= ") + ("" if result.returncode in (0, 5) else "  (FAILED)")


def run_rate(dataset: str, sets: tuple[str, ...], device: str, epochs: int, out: Path) -> float:
    from cmkd_bench.training.runner import RunRequest, execute, resolve_run

    record = execute(resolve_run(RunRequest(method="kd", dataset=dataset, epochs=epochs, device=device, out=str(out),
                                            sets=sets)), force=True)
    return float(record["steps_per_s"])


def synthetic_packed(root: Path, clips: int, seed: int = 0) -> None:
    """A prepared crema-d folder holding only its packed store, of random frames and spectrograms
    (what `prepare` would pack: 3 frames per clip at 256 px from 341 x 256 JPEGs, fd-cmkd spectrograms)."""
    from cmkd_bench.data.clips import CLIPS_CSV, INFO_JSON, LAYOUT_VERSION, clips_fingerprint
    from cmkd_bench.datasets.crema_d import CLASSES, DEFAULT_PROTOCOL, PROTOCOLS, STORED_RATE
    from cmkd_bench.data.packed import PACKED_DIR, PACKED_JSON, PACKED_VERSION, audio_key

    rng, frames, side = np.random.default_rng(seed), 3, 256
    rows = [(f"clip{i:05d}", i % len(CLASSES), "test" if i % 10 == 0 else "train") for i in range(clips)]
    with open(root / CLIPS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("clip", "label", "split", "frames", "start", "end"))
        writer.writerows((name, label, split, frames, "", "") for name, label, split in rows)
    (root / INFO_JSON).write_text(json.dumps({"dataset": "crema-d", "layout": LAYOUT_VERSION, "classes": list(CLASSES),
                                              "audio": {"stored": "waveform", "rate": STORED_RATE}, "clips": clips}))
    key = audio_key(DEFAULT_PROTOCOL, PROTOCOLS[DEFAULT_PROTOCOL].audio)
    bins, width = PROTOCOLS[DEFAULT_PROTOCOL].audio.shape()
    folder = root / PACKED_DIR
    folder.mkdir()
    splits = {}
    for split in ("train", "test"):
        names = [(n, label) for n, label, s in rows if s == split]
        splits[split] = len(names)
        with open(folder / f"{split}-clips.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("clip", "label"), *names])
        pixels = np.lib.format.open_memmap(folder / f"{split}-frames.npy", "w+", np.uint8, (len(names) * frames, side, side, 3))
        for start in range(0, len(pixels), 256):
            pixels[start:start + 256] = rng.integers(0, 256, size=pixels[start:start + 256].shape, dtype=np.uint8)
        pixels.flush()
        np.save(folder / f"{split}-frames-index.npy",
                np.array([(i * frames, frames, 341, 256) for i in range(len(names))], dtype=np.int64))
        np.save(folder / f"{split}-audio-{key}.npy", rng.normal(size=(len(names), 1, bins, width)).astype(np.float16))
    (folder / PACKED_JSON).write_text(json.dumps({"version": PACKED_VERSION, "clips": clips_fingerprint(root),
                                                  "size": side, "splits": splits, "audio": {key: [1, bins, width]}}))


def av_step_rates(root: Path, device: torch.device, image_size: int, batch: int, steps: int, workers: int,
                  compile_too: bool) -> dict[str, float]:
    """ResNet-18 audio teacher -> ResNet-18 visual student, kd, at crema-d's shapes: steps/s resident / packed / compiled."""
    from cmkd_bench.recipes import autocast, build_optimizer
    from cmkd_bench.registry import DATASETS, METHODS
    from cmkd_bench.training.runner import build_model

    data = DATASETS.build("crema-d", root, image_size=image_size, num_workers=workers, store="packed")
    spec = data.spec

    def models():
        teacher = build_model("resnet18", data, "audio", 0, device).eval().requires_grad_(False)
        student = build_model("resnet18", data, "visual", 1, device)
        method = METHODS.build("kd", student.info, teacher.info, spec.with_direction("audio", "visual")).to(device)
        return teacher, student, method, build_optimizer(list(student.parameters()), spec.recipe)

    def step(parts, b) -> None:
        teacher, student, method, optimizer = parts
        with autocast(device):
            with torch.no_grad():
                t_out = teacher(b["audio"])
            losses = method(student(b["visual"]), t_out, b)
        optimizer.zero_grad(set_to_none=True)
        torch.stack([v.float() for v in losses.values()]).sum().backward()
        optimizer.step()

    warm = 1 if steps < 5 else 2

    def timed(parts, batches, warmup: int = warm) -> float:
        """Steps/s over the batches after the first `warmup` (start-up, autotuning, compilation)."""
        count, began = 0, 0.0
        for i, b in enumerate(batches):
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                began = time.perf_counter()
            step(parts, b)
            count += i >= warmup
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return count / (time.perf_counter() - began)

    def packed_batches(count: int):
        """`count` training batches from the packed loader, over as many epochs as it takes (none kept)."""
        served, epoch = 0, 0
        while served < count:
            for b in data.batches("train", batch, shuffle=True, seed=epoch, device=device):
                yield b
                served += 1
                if served >= count:
                    return
            epoch += 1

    first = next(data.batches("train", batch, shuffle=True, seed=0, device=device))
    resident = [first] * (steps + warm)
    rates = {"resident": timed(models(), resident), "packed": timed(models(), packed_batches(steps + warm))}
    if compile_too:
        parts = models()
        for model in parts[:2]:
            model.net.compile()
        rates["compiled"] = timed(parts, [first] * (steps + 3), warmup=3)  # the first steps compile
    return rates


def suite_rate(device: str, jobs: int, runs: int, sets: tuple[str, ...], out: Path) -> float:
    """Runs per minute of `runs` no-kd runs on synth-av (one per seed), `jobs` at once on `device`."""
    command = [sys.executable, "-m", "cmkd_bench", "suite", "--methods", "no-kd", "--datasets", "synth-av",
               "--directions", "default", "--seeds", ",".join(str(s) for s in range(runs)), "--epochs", "1",
               "--out", str(out), "--jobs", str(jobs), "--devices", device, *[a for s in sets for a in ("--set", s)]]
    began = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"gpu_check: the suite at --jobs {jobs} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return runs * 60 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="small sizes (the default without CUDA)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    parser.add_argument("--steps", type=int, help="timed steps of the audio-visual step (default 40; small: 1)")
    parser.add_argument("--clips", type=int, help="clips of the generated packed store (default 2000; small: 60)")
    parser.add_argument("--workers", type=int, default=4, help="packed loader workers (small: 0)")
    parser.add_argument("--suite-runs", type=int, help="runs per suite (default 8; small: 2)")
    parser.add_argument("--jobs", help="comma-separated --jobs values (default 1,4,8; small: 1,2)")
    args = parser.parse_args()
    from cmkd_bench.catalog import load_all
    from cmkd_bench.training.engine import resolve_device

    device = resolve_device(args.device)
    small = args.small or device.type != "cuda"
    steps = args.steps or (1 if small else 40)
    clips = args.clips or (60 if small else 2000)
    runs = args.suite_runs or (2 if small else 8)
    jobs = [int(j) for j in (args.jobs or ("1,2" if small else "1,4,8")).split(",")]
    workers = 0 if small else args.workers
    load_all()
    began = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    rows.append(("gpu-marked tests", "pytest -m gpu", "not run" if args.skip_tests else gpu_tests()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        av_sets = ("train=64", "val=32", "test=32", "image_size=16") if small else ()
        rgbd_sets = ("train=8", "val=4", "test=4", "image_size=16") if small else ()
        epochs = 1 if small else 2
        for name, sets in (("synth-av", av_sets), ("synth-rgbd", rgbd_sets)):
            rate = run_rate(name, sets, str(device), epochs, tmp_path / name)
            rows.append((f"kd run on {name}", "default backbones" + (", tiny data" if small else ""), f"{rate:.1f} steps/s"))
        root = tmp_path / "crema"
        root.mkdir()
        synthetic_packed(root, clips)
        image_size, batch = (64, 4) if small else (224, 64)
        rates = av_step_rates(root, device, image_size, batch, steps, workers, compile_too=not small)
        shape = f"ResNet-18 a->v kd, 3x{image_size}x{image_size} + 1x257x299, batch {batch}"
        rows.append(("AV step, data resident", shape, f"{rates['resident']:.2f} steps/s"))
        rows.append(("AV step, packed loader", f"{workers} workers, crop on {device.type}", f"{rates['packed']:.2f} steps/s"))
        rows.append(("packed / resident", "target >= 0.9", f"{rates['packed'] / rates['resident']:.2f}"))
        if "compiled" in rates:
            rows.append(("AV step, --compile", "resident data", f"{rates['compiled']:.2f} steps/s"))
            rows.append(("compiled / eager", "", f"{rates['compiled'] / rates['resident']:.2f}"))
        else:
            rows.append(("AV step, --compile", "", "not measured (small sizes)"))
        suite_sets = ("train=64", "val=32", "test=32", "image_size=16") if small else ("train=512", "val=128", "test=128")
        for k in jobs:
            rate = suite_rate(str(device), k, runs, suite_sets, tmp_path / f"suite-j{k}")
            rows.append((f"tiny suite, --jobs {k}", f"{runs} no-kd runs on {device}", f"{rate:.1f} runs/min"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"GPU check on {device} ({name}), torch {torch.__version__}, "
          f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {time.perf_counter() - began:.0f} s"
          + (" (small sizes: no GPU figures)" if small else ""))
    print()
    print("| measure | setting | value |")
    print("|---|---|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
