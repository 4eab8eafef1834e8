"""Suite throughput: runs per minute of one fixed tiny grid with --jobs 1 and with --jobs N, side by side.

The grid (synth-av at a small size, no-kd and kd, the default direction, `--seeds` seeds) runs twice
as `python -m cmkd_bench suite ...` processes, into two fresh folders, so nothing is reused between
the two: first with one job, then with N jobs, each run with the runs' default CPU threads (1, a
setting of the run since it changes CPU results; scheduler.py). Wall time includes the suite's start-up.

    python benchmarks/suite_throughput.py [--jobs 2] [--seeds 2] [--epochs 2] [--size 64]

Prints the wall time and runs/minute of each and their ratio (N jobs over 1 job). On a machine
that is otherwise idle, --jobs N should not be slower than --jobs 1 (ratio >= 1).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmkd_bench.experiments.scheduler import available_cores, threads_per_run


def suite_command(out: Path, jobs: int, seeds: int, epochs: int, size: int) -> list[str]:
    sets = {"train": size, "val": size // 2, "test": size // 2, "image_size": 16}
    return [sys.executable, "-m", "cmkd_bench", "suite", "--methods", "no-kd,kd", "--datasets", "synth-av",
            "--directions", "default", "--seeds", ",".join(str(seed) for seed in range(seeds)),
            "--epochs", str(epochs), "--device", "cpu", "--out", str(out), "--jobs", str(jobs),
            *(arg for key, value in sets.items() for arg in ("--set", f"{key}={value}"))]


def timed(jobs: int, seeds: int, epochs: int, size: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "runs"
        began = time.perf_counter()
        done = subprocess.run(suite_command(out, jobs, seeds, epochs, size), capture_output=True, text=True)
        seconds = time.perf_counter() - began
        if done.returncode:
            raise SystemExit(f"the suite with --jobs {jobs} failed (exit {done.returncode}): {done.stderr.strip()}")
        runs = len(list(out.glob("*/result.json")))
    return runs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="training samples (val and test: half)")
    args = parser.parse_args()
    print(f"{available_cores()} cores available; grid: synth-av (train {args.size}), no-kd and kd, "
          f"{args.seeds} seed(s), {args.epochs} epochs")
    rates = {}
    for jobs in (1, args.jobs):
        runs, seconds = timed(jobs, args.seeds, args.epochs, args.size)
        rates[jobs] = runs / seconds * 60
        print(f"--jobs {jobs:<3} ({threads_per_run(jobs)} threads per run): {runs} runs in {seconds:6.1f} s, "
              f"{rates[jobs]:6.2f} runs/min")
    print(f"ratio (--jobs {args.jobs} / --jobs 1): {rates[args.jobs] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
