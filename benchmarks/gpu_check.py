"""The GPU check: one short call on a GPU machine that measures what a CPU cannot, in one table.

    python benchmarks/gpu_check.py [--device cuda:0] [--small] [--budget-s 300] [--stages tests,runs,av,suite,compile]
    (or `make gpu-check GPU_CHECK_ARGS="..."`)

Installs nothing and downloads nothing. Each row is printed, and flushed, as soon as it is measured,
so a crash or a time-out keeps every figure before it. Each stage is guarded: one that raises is one
row saying FAILED and why, and the next stage runs. The stages share one time budget (--budget-s): a
stage still running when it is spent is stopped (a row says so) and the stages after it print
"skipped: budget spent". Exit code 0 when no row FAILED, 1 when one did, 2 for bad input.

Stages, in order:
  tests    the gpu-marked tests (`CMKD_BENCH_TEST_CUDA=1 pytest -m gpu`, a subprocess; they skip without CUDA)
  runs     steps/s of a kd run on synth-av and on synth-rgbd (default backbones), from their run records
  av       a ResNet-18 audio-visual kd step at CREMA-D's shapes (student on 3 x 224 x 224 frames, teacher
           on 1 x 257 x 299 spectrograms, batch 64, bf16 autocast on CUDA): steps/s with the batch
           resident on the device, then with batches from the packed loader (a generated CREMA-D-shaped
           packed store, persistent workers, pinned memory on CUDA, crop and flip on the device), their
           ratio (target >= 0.9), and whether a whole epoch of the workers' batches equals the batches
           read without workers (it must)
  suite    runs/minute of a tiny no-kd suite (teacher epochs 1) at each --jobs, on one device
  compile  the av stage's step again through `--compile`'s code path (training/execution.prepare_models):
           the compiled losses against eager ones from the same initial weights, steps/s, the ratio to
           eager (last, since the budget cuts it first)
  methods  (not run unless named; benchmarks/first_gpu.sh runs it) every registered method for one short
           epoch on synth-av and on synth-rgbd (the methods of its task), one row each: steps/s or FAILED

Without CUDA it runs at small sizes (`--small`: tiny data, a 64 px frame, batch 4, one timed step,
2 loader workers, suites of 2 runs at --jobs 2). What CPU mode cannot cover: pinned memory
(pin_memory is CUDA-only: the loader pins only for a CUDA device) and bf16 autocast; and it leaves
out the compile stage unless --compile is given, since inductor needs 40-100 s of CPU here (2 cores)
to compile even synth-av's small-cnn pair, forward and backward. Its numbers say nothing
about a GPU; it exists so that CI keeps every path working (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = ("tests", "runs", "av", "suite", "compile", "methods")
DEFAULT_STAGES = STAGES[:-1]
Row = tuple[str, str, str]


class BudgetSpent(BaseException):
    """Raised in the main thread when the check's time budget runs out (a BaseException, so that no
    `except Exception` on the way swallows it)."""


class Table:
    """The rows, each printed and flushed as it comes; counts the FAILED ones."""

    def __init__(self) -> None:
        self.failed = 0
        print("| measure | setting | value |")
        print("|---|---|---:|", flush=True)

    def row(self, measure: str, setting: str, value: str) -> None:
        self.failed += value.startswith("FAILED")
        cells = [" ".join(str(cell).replace("|", "/").split()) for cell in (measure, setting, value)]
        print("| " + " | ".join(cells) + " |", flush=True)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _alarm(signum, frame) -> None:
    raise BudgetSpent()


def run_stage(table: Table, budget: Budget, name: str, rows: Callable[[], Iterable[Row]]) -> None:
    """Print the stage's rows as they come; an exception is one FAILED row, the budget stops it."""
    left = budget.left()
    if left < 1:
        table.row(name, "", "skipped: budget spent")
        return
    began = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        for row in rows():
            table.row(*row)
    except BudgetSpent:
        table.row(name, "", f"stopped: the budget ran out after {time.perf_counter() - began:.0f} s of this stage")
    except Exception as error:  # noqa: BLE001 - a stage's failure is one row, then the next stage runs
        table.row(name, "", f"FAILED: {describe(error)}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def describe(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def command(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `args` in a process group of its own, all of which is killed at the time-out or on any
    interruption (a suite's runs are that process's children)."""
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = process.communicate(timeout=max(timeout, 1))
    except BaseException:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group had ended already
            pass
        process.communicate()
        raise
    return subprocess.CompletedProcess(args, process.returncode, out, err)


# -- stages ------------------------------------------------------------------------------------------
def gpu_tests(budget: Budget) -> Iterator[Row]:
    # tests/conftest.py hides CUDA from the tests unless CMKD_BENCH_TEST_CUDA=1 (CPU results are bitwise)
    try:
        result = command([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                         timeout=budget.left(), env={"CMKD_BENCH_TEST_CUDA": "1"})
    except subprocess.TimeoutExpired:
        raise BudgetSpent() from None
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else f"exit code {result.returncode}"
    yield "gpu-marked tests", "CMKD_BENCH_TEST_CUDA=1 pytest -m gpu", summary if result.returncode in (0, 5) else f"FAILED: {summary}"


def run_record(method: str, dataset: str, sets: tuple[str, ...], device: str, epochs: int, out: Path,
               compile_run: bool = False) -> dict:
    from cmkd_bench.training.runner import RunRequest, execute, resolve_run

    request = RunRequest(method=method, dataset=dataset, epochs=epochs, teacher_epochs=1, device=device,
                         out=str(out), sets=sets, compile=compile_run)
    return execute(resolve_run(request), force=True)


def kd_runs(sizes: dict, device: torch.device, out: Path) -> Iterator[Row]:
    for name in ("synth-av", "synth-rgbd"):
        record = run_record("kd", name, sizes[name], str(device), sizes["epochs"], out / name)
        yield (f"kd run on {name}", "default backbones" + (", tiny data" if sizes[name] else ""),
               f"{float(record['steps_per_s']):.1f} steps/s")


def every_method(sizes: dict, device: torch.device, out: Path, budget: Budget) -> Iterator[Row]:
    """One short epoch of every registered method (one row each); a failing method is its own row."""
    from cmkd_bench.registry import DATASETS, METHODS

    for name in ("synth-av", "synth-rgbd"):
        for method in METHODS.names(task=DATASETS.get(name).tasks[0]):
            if budget.left() < 2:
                yield f"{method} on {name}", "1 epoch", "skipped: budget spent"
                continue
            began = time.perf_counter()
            try:
                record = run_record(method, name, sizes["methods"][name], str(device), 1, out / name)
                value = f"{float(record['steps_per_s']):.1f} steps/s, test {record['metrics']['test']:.1f}"
            except Exception as error:  # noqa: BLE001 - one method's failure is its row
                value = f"FAILED: {describe(error)}"
            yield f"{method} on {name}", f"1 epoch, {time.perf_counter() - began:.1f} s", value


def synthetic_packed(root: Path, clips: int, seed: int = 0) -> None:
    """A prepared crema-d folder holding only its packed store, of random frames and spectrograms
    (what `prepare` would pack: 3 frames per clip at 256 px from 341 x 256 JPEGs, fd-cmkd spectrograms)."""
    from cmkd_bench.data.clips import CLIPS_CSV, INFO_JSON, LAYOUT_VERSION, clips_fingerprint
    from cmkd_bench.data.packed import PACKED_DIR, PACKED_JSON, PACKED_VERSION, audio_key
    from cmkd_bench.datasets.crema_d import CLASSES, DEFAULT_PROTOCOL, PROTOCOLS, STORED_RATE

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


class KDStep:
    """A teacher -> student kd training step (the engine's work for one batch, without the engine)."""

    def __init__(self, data, backbone: str, teacher_modality: str, student_modality: str, device: torch.device,
                 compiled: bool = False) -> None:
        from cmkd_bench.recipes import build_optimizer
        from cmkd_bench.registry import METHODS
        from cmkd_bench.training.execution import Execution, prepare_models
        from cmkd_bench.training.runner import build_model

        self.device, self.t_mod, self.s_mod = device, teacher_modality, student_modality
        self.teacher = build_model(backbone, data, teacher_modality, 0, device).eval().requires_grad_(False)
        self.student = build_model(backbone, data, student_modality, 1, device)
        prepare_models(Execution(compile=compiled), self.teacher, self.student)
        spec = data.spec.with_direction(teacher_modality, student_modality)
        self.method = METHODS.build("kd", self.student.info, self.teacher.info, spec).to(device)
        self.optimizer = build_optimizer(list(self.student.parameters()), spec.recipe)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        from cmkd_bench.recipes import autocast

        with autocast(self.device):
            with torch.no_grad():
                t_out = self.teacher(batch[self.t_mod])
            return self.method(self.student(batch[self.s_mod]), t_out, batch)

    def __call__(self, batch: dict) -> None:
        losses = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        torch.stack([v.float() for v in losses.values()]).sum().backward()
        self.optimizer.step()

    def rate(self, batches: Iterable[dict], warmup: int) -> float:
        """Steps/s over the batches after the first `warmup` (start-up, autotuning, compilation)."""
        count, began = 0, time.perf_counter()
        for i, batch in enumerate(batches):
            if i == warmup:
                self.sync()
                began = time.perf_counter()
            self(batch)
            count += i >= warmup
        self.sync()
        return count / (time.perf_counter() - began)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def compare_epochs(with_workers, without, batch: int, device: torch.device) -> str:
    """Whether a whole training epoch from the workers (pinned on CUDA) equals the one read without them."""
    pairs = zip(with_workers.batches("train", batch, shuffle=True, seed=3, device=device),
                without.batches("train", batch, shuffle=True, seed=3, device=device), strict=True)
    count = 0
    for count, (a, b) in enumerate(pairs, 1):
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)):
                return f"FAILED: batch {count} differs in {key!r}"
    return f"identical ({count} batches)"


def av_steps(root: Path, device: torch.device, image_size: int, batch: int, steps: int, workers: int,
             found: dict) -> Iterator[Row]:
    """ResNet-18 audio teacher -> ResNet-18 visual student, kd, at crema-d's shapes."""
    from cmkd_bench.registry import DATASETS

    data = DATASETS.build("crema-d", root, image_size=image_size, num_workers=workers, store="packed")
    warm = 1 if steps < 5 else 2
    shape = f"ResNet-18 a->v kd, 3x{image_size}x{image_size} + 1x257x299, batch {batch}"
    first = next(data.batches("train", batch, shuffle=True, seed=0, device=device))
    found.update(data=data, first=first, shape=shape)
    found["resident"] = KDStep(data, "resnet18", "audio", "visual", device).rate([first] * (steps + warm), warm)
    yield "AV step, data resident", shape, f"{found['resident']:.2f} steps/s"

    def packed_batches(count: int) -> Iterator[dict]:
        """`count` training batches from the packed loader, over as many epochs as it takes (none kept)."""
        epoch = 0
        while True:
            for b in data.batches("train", batch, shuffle=True, seed=epoch, device=device):
                yield b
                count -= 1
                if count == 0:
                    return
            epoch += 1

    pinned = "pinned" if device.type == "cuda" else "not pinned (pin_memory is CUDA-only)"
    rate = KDStep(data, "resnet18", "audio", "visual", device).rate(packed_batches(steps + warm), warm)
    yield "AV step, packed loader", f"{workers} workers, {pinned}, crop on {device.type}", f"{rate:.2f} steps/s"
    yield "packed / resident", "target >= 0.9", f"{rate / found['resident']:.2f}"
    if workers:
        plain = DATASETS.build("crema-d", root, image_size=image_size, num_workers=0, store="packed")
        yield ("packed batches, workers = none", f"one epoch, {workers} workers ({pinned}) against 0 workers",
               compare_epochs(data, plain, batch, device))


def compiled_steps(device: torch.device, small: bool, steps: int, found: dict) -> Iterator[Row]:
    """--compile's code path: the same step with both networks compiled (prepare_models)."""
    from cmkd_bench.registry import DATASETS

    if small:  # synth-av's small-cnn pair: ResNet-18's compile takes many minutes of CPU
        data = DATASETS.build("synth-av", None, train=16, val=4, test=4, image_size=16)
        backbone, t_mod, s_mod, shape = "small-cnn", "visual", "audio", "synth-av small-cnn v->a kd, 16 px, batch 8"
        first = next(data.batches("train", 8, shuffle=False, device=device))
    elif "first" in found:
        data, first, shape = found["data"], found["first"], found["shape"]
        backbone, t_mod, s_mod = "resnet18", "audio", "visual"
    else:
        yield "compile", "", "skipped: it reuses the av stage's batch, and the av stage did not make one"
        return
    tolerance = 1e-1 if device.type == "cuda" else 1e-4  # bf16 autocast on CUDA; a miscompiled graph is far off
    eager = KDStep(data, backbone, t_mod, s_mod, device).losses(first)
    began = time.perf_counter()
    step = KDStep(data, backbone, t_mod, s_mod, device, compiled=True)
    compiled = step.losses(first)
    seconds = time.perf_counter() - began
    worst = max(float((compiled[k].detach().float() - eager[k].detach().float()).abs()
                      / eager[k].detach().float().abs().clamp(min=1e-6)) for k in eager)
    agree = sorted(compiled) == sorted(eager) and worst <= tolerance
    yield ("compiled losses = eager", f"{shape}, same initial weights",
           f"{'agree' if agree else 'FAILED: differ'} (largest relative difference {worst:.1e}, first forward {seconds:.0f} s)")
    warm = 3  # the first steps compile (forward, backward, optimizer)
    rate = step.rate([first] * (max(steps, 1) + warm), warm)
    yield "AV step, --compile" if not small else "small step, --compile", shape, f"{rate:.2f} steps/s"
    if "resident" in found and not small:
        yield "compiled / eager", "resident data", f"{rate / found['resident']:.2f}"


def suite_rates(device: torch.device, jobs: list[int], runs: int, sets: tuple[str, ...], out: Path,
                budget: Budget) -> Iterator[Row]:
    for k in jobs:
        args = [sys.executable, "-m", "cmkd_bench", "suite", "--methods", "no-kd", "--datasets", "synth-av",
                "--directions", "default", "--seeds", ",".join(str(s) for s in range(runs)), "--epochs", "1",
                "--teacher-epochs", "1", "--out", str(out / f"j{k}"), "--jobs", str(k), "--devices", str(device),
                *[a for s in sets for a in ("--set", s)]]
        began = time.perf_counter()
        try:
            result = command(args, timeout=budget.left())
        except subprocess.TimeoutExpired:
            raise BudgetSpent() from None
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            why = ((result.stderr or result.stdout).strip().splitlines() or [f"exit code {result.returncode}"])[-1]
            yield f"tiny suite, --jobs {k}", f"{runs} no-kd runs on {device}", f"FAILED: exit {result.returncode}: {why}"
        else:
            yield f"tiny suite, --jobs {k}", f"{runs} no-kd runs on {device}", f"{runs * 60 / seconds:.1f} runs/min"


# -- the command -------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit code 2, no usage block
        print(f"gpu_check: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def stage_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(STAGES)}")
    return names


def at_least(low: float, kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected at least {low}, got {text}")
        return value
    return parse


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda:0 where there is one), cpu, cuda or cuda:N")
    parser.add_argument("--small", action="store_true", help="small sizes (the default without CUDA)")
    parser.add_argument("--stages", type=stage_names, default=list(DEFAULT_STAGES),
                        help=f"comma-separated, in this order: {', '.join(STAGES)} (default: all but methods)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the tests stage")
    parser.add_argument("--budget-s", type=at_least(1, float), help="time budget of all stages (default 300; small: 240)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="run the compile stage (default: on CUDA only)")
    parser.add_argument("--steps", type=at_least(1, int), help="timed steps of the AV step (default 30; small: 1)")
    parser.add_argument("--clips", type=at_least(20, int), help="clips of the generated packed store (default 1024; small: 60)")
    parser.add_argument("--workers", type=at_least(0, int), help="packed loader workers (default 4; small: 2)")
    parser.add_argument("--suite-runs", type=at_least(1, int), help="runs per suite (default 4; small: 2)")
    parser.add_argument("--jobs", type=positive_ints, help="comma-separated --jobs values (default 1,4; small: 2)")
    return parser.parse_args(argv)


def header(device: torch.device, small: bool, budget_s: float) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cuda = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        name, cuda = platform.processor() or platform.machine(), ""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"GPU check on {device} ({name}), torch {torch.__version__}{cuda}, {when}, budget {budget_s:.0f} s"
            + (" (small sizes: no GPU figures)" if small else ""))


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    from cmkd_bench.catalog import load_all
    from cmkd_bench.errors import UserError
    from cmkd_bench.training.engine import resolve_device

    try:
        device = resolve_device(args.device)
    except UserError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return 2
    small = args.small or device.type != "cuda"
    budget_s = args.budget_s or (240 if small else 300)
    steps = args.steps or (1 if small else 30)
    clips = args.clips or (60 if small else 1024)
    runs = args.suite_runs or (2 if small else 4)
    jobs = args.jobs or ([2] if small else [1, 4])
    workers = args.workers if args.workers is not None else (2 if small else 4)
    compile_stage = (not small) if args.compile is None else args.compile
    image_size, batch = (64, 4) if small else (224, 64)
    tiny = ("train=64", "val=32", "test=32", "image_size=16")
    if small:
        data_sets = {"synth-av": tiny, "synth-rgbd": ("train=8", "val=4", "test=4", "image_size=16")}
        sizes = {**data_sets, "epochs": 1, "methods": data_sets}
    else:  # default data for the runs' steps/s; the methods' epoch shorter (37 runs)
        sizes = {"synth-av": (), "synth-rgbd": (), "epochs": 2,
                 "methods": {"synth-av": ("train=512", "val=128", "test=128"), "synth-rgbd": ()}}
    stages = [name for name in STAGES if name in args.stages and not (name == "tests" and args.skip_tests)]
    load_all()
    began, budget = time.perf_counter(), Budget(budget_s)
    print(header(device, small, budget_s), flush=True)
    print()
    table = Table()
    found: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp_path = Path(tmp)
        plan: dict[str, Callable[[], Iterable[Row]]] = {
            "tests": lambda: gpu_tests(budget),
            "runs": lambda: kd_runs(sizes, device, tmp_path / "runs"),
            "av": lambda: av_with_store(tmp_path / "crema", clips, device, image_size, batch, steps, workers, found),
            "compile": lambda: compiled_steps(device, small, steps, found),
            "suite": lambda: suite_rates(device, jobs, runs, tiny if small else ("train=512", "val=128", "test=128"),
                                         tmp_path / "suite", budget),
            "methods": lambda: every_method(sizes, device, tmp_path / "methods", budget),
        }
        for name in stages:
            if name == "compile" and not compile_stage:
                table.row("compile", "", "not run: inductor needs 40-100 s of CPU for even synth-av's small-cnn "
                                         "pair (--compile runs it)" if small else "not run (--no-compile)")
                continue
            run_stage(table, budget, name, plan[name])
        found.clear()  # the packed loaders' workers end before the store is deleted
    print()
    print(f"{time.perf_counter() - began:.0f} s; " + (f"{table.failed} row(s) FAILED" if table.failed else "no row FAILED"),
          flush=True)
    return 1 if table.failed else 0


def av_with_store(root: Path, clips: int, device: torch.device, image_size: int, batch: int, steps: int,
                  workers: int, found: dict) -> Iterator[Row]:
    began = time.perf_counter()
    root.mkdir()
    synthetic_packed(root, clips)
    yield "generated packed store", f"{clips} clips, 3 frames at 256 px", f"{time.perf_counter() - began:.1f} s"
    yield from av_steps(root, device, image_size, batch, steps, workers, found)


if __name__ == "__main__":
    sys.exit(main())
