from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

# The tests compare results bitwise between runs and processes, which holds on the CPU: on a machine
# with a GPU, `--device auto` and the runs the tests start must not pick it up. CUDA stays hidden
# (before torch first looks for it, in this process and the ones it starts) except in a session
# meant for the `gpu` tests: `CMKD_BENCH_TEST_CUDA=1 pytest -m gpu` (what make gpu-check runs).
if os.environ.get("CMKD_BENCH_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

from cmkd_bench.catalog import load_all  # noqa: E402

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


# A plugin whose `gated-kd` (kd) waits at the start of epoch 1 until the file `release` beside the
# plugin exists (120 s at most), so a test that signals a run once its first checkpoint appears
# always finds it mid-run, however loaded the machine; the test creates `release` after signalling.
GATED_KD_PLUGIN = '''
import time
from pathlib import Path

from cmkd_bench.methods.kd import KD
from cmkd_bench.registry import METHODS

RELEASE = Path(__file__).with_name("release")


@METHODS.register("gated-kd", tasks=("classification",), description="kd that waits at epoch 1 for a file (tests)")
class GatedKD(KD):
    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        deadline = time.time() + 120
        while epoch == 1 and not RELEASE.exists() and time.time() < deadline:
            time.sleep(0.05)
'''


def gated_plugin(folder: Path) -> Path:
    """GATED_KD_PLUGIN written to FOLDER/gated.py; its release file is FOLDER/release."""
    path = folder / "gated.py"
    path.write_text(GATED_KD_PLUGIN)
    return path


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
