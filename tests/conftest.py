from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
