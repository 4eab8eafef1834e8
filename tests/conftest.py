from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmkd_bench.catalog import load_all

REPO = Path(__file__).resolve().parents[1]
TINY_SYNTH = ("--set", "train=64", "--set", "val=32", "--set", "test=32", "--set", "image_size=16")


@pytest.fixture(autouse=True, scope="session")
def _registered() -> None:
    load_all()


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    # Bitwise comparisons between processes need the same intra-op thread count.
    import torch

    torch.set_num_threads(1)


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cmkd_bench ARGS` in a fresh process, as a user would."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cmkd_bench", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


# -- independent references shared by the golden tests ---------------------------------------
def bilinear(a: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """H x W -> out_h x out_w, align_corners=False: source = (dst + 0.5) * in / out - 0.5, clamped at 0."""
    def taps(n_in: int, n_out: int) -> list[tuple[int, int, float]]:
        result = []
        for d in range(n_out):
            src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = int(math.floor(src))
            result.append((i0, min(i0 + 1, n_in - 1), src - i0))
        return result

    def at(y0: int, y1: int, wy: float, x0: int, x1: int, wx: float) -> torch.Tensor:
        return (1 - wy) * ((1 - wx) * a[y0, x0] + wx * a[y0, x1]) + wy * ((1 - wx) * a[y1, x0] + wx * a[y1, x1])

    rows, cols = taps(a.shape[0], out_h), taps(a.shape[1], out_w)
    return torch.stack([torch.stack([at(*row, *col) for col in cols]) for row in rows])
