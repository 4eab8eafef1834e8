"""Suite throughput: runs per minute of one fixed tiny grid with --jobs 1 and with --jobs N, side by side.

The grid (synth-av at a small size, no-kd and kd, the default direction, `--seeds` seeds) runs twice
through `cmkd-bench suite`'s own code (suite.run_suite, local runs as processes), into two fresh
folders, so nothing is reused between the two: first with one job, then with N jobs, each run with
the default share of the CPU threads (the cores available divided by the jobs; scheduler.py).

    python benchmarks/suite_throughput.py [--jobs 2] [--seeds 2] [--epochs 2] [--size 64]

Prints the wall time and runs/minute of each and their ratio (N jobs over 1 job). On a machine
that is otherwise idle, --jobs N should not be slower than --jobs 1 (ratio >= 1).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cmkd_bench.cli.suite import run_command_line
from cmkd_bench.scheduler import available_cores, threads_per_run
from cmkd_bench.suite import run_suite, suite_from_mapping


def grid(out: Path, seeds: int, epochs: int, size: int) -> dict:
    return {"datasets": [{"name": "synth-av", "sets": {"train": size, "val": size // 2, "test": size // 2,
                                                       "image_size": 16}}],
            "methods": ["no-kd", "kd"], "directions": "default", "seeds": list(range(seeds)),
            "epochs": epochs, "device": "cpu", "out": str(out)}


def timed(jobs: int, seeds: int, epochs: int, size: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as folder:
        suite = suite_from_mapping(grid(Path(folder) / "runs", seeds, epochs, size), where="suite_throughput")
        began = time.perf_counter()
        code = run_suite(suite, jobs, ["cpu"], dry_run=False, command=run_command_line, echo=lambda _: None)
        seconds = time.perf_counter() - began
        if code:
            raise SystemExit(f"the suite with --jobs {jobs} had failed runs (exit {code})")
        runs = len(list((Path(folder) / "runs").glob("*/result.json")))
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
