"""`suite --devices cuda:0 --jobs K`: K job slots on one device, K runs at once (cmkd_bench/experiments/scheduler.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cmkd_bench.experiments.scheduler import PlannedRun, Scheduler
from cmkd_bench.training.runner import RunRequest


def test_k_jobs_share_one_device_and_run_at_once(tmp_path):
    runs = [PlannedRun(RunRequest(method="kd", dataset="synth-av", out=str(tmp_path)), f"run{i}", f"run{i}", "new")
            for i in range(4)]
    stamps = tmp_path / "stamps"
    stamps.mkdir()

    def command(request: RunRequest, device: str, plugins) -> list[str]:
        name = next(f"run{i}" for i, r in enumerate(runs) if r.request is request)
        script = (f"import time, pathlib; p = pathlib.Path({str(stamps)!r}); "
                  f"(p / '{name}-start-{device}').write_text(str(time.time())); time.sleep(1.0); "
                  f"(p / '{name}-end').write_text(str(time.time()))")
        return [sys.executable, "-c", script]

    scheduler = Scheduler(runs, jobs=4, devices=["cuda:0"], plugins=(), command=command, echo=lambda _: None)
    assert scheduler.slots == ["cuda:0"] * 4
    began = time.perf_counter()
    outcomes = scheduler.run()
    assert len(outcomes) == 4
    starts = {p.name.split("-start-")[0]: float(p.read_text()) for p in stamps.glob("*-start-*")}
    ends = {p.name.removesuffix("-end"): float(p.read_text()) for p in stamps.glob("*-end")}
    assert {p.name.split("-start-")[1] for p in stamps.glob("*-start-*")} == {"cuda:0"}
    assert max(starts.values()) < min(ends.values())  # all four were running at the same time
    assert time.perf_counter() - began < 3.5  # not one after another (4 s)
