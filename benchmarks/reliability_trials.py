"""Reliability trials: the promises of docs/reliability.md tried against real `cmkd-bench run` processes, counted.

    python benchmarks/reliability_trials.py [--kills 6] [--seed 0] [--out DIR]

Each trial runs the CLI as a user would (a fresh process), on synth-av at a tiny size (3 epochs), and
is judged by what the user sees and what is left on disk:

- kill: SIGKILL at a random moment of a run, then the same command again: the record's metrics equal an
  uninterrupted run's, and no temporary file (NAME.tmp-PID) is left;
- damage: a byte-flipped run checkpoint, cached teacher, teacher.json or result.json: refused in one
  line with exit 2, or made again with a line saying why; never used;
- identity: a teacher.pt, checkpoint.pt or result.json copied in (with its digest) from another
  teacher or run, a plug-in that re-registers a built-in's name, paired data with one class: refused,
  or made again with a line saying why; never accepted silently;
- bad input: calls that must be one line on stderr, exit 2, and leave no output folder.

Prints one line per trial, then a count per kind: "N passed, M failed". Takes a few minutes of CPU;
run it alone. The full-disk and concurrency promises are covered by tests/test_reliability*.py (a
full disk is simulated there by making writes fail; concurrency by parallel runs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = ["--set", "train=96", "--set", "val=48", "--set", "test=48", "--set", "image_size=16"]
RUN = ["run", "--method", "kd", "--dataset", "synth-av", "--device", "cpu", "--quiet", "--epochs", "3", *SIZE]
RESULTS: dict[str, list[bool]] = {}


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "cmkd_bench", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "cmkd_bench", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)


def judge(kind: str, name: str, ok: bool, detail: str) -> None:
    RESULTS.setdefault(kind, []).append(ok)
    print(f"{kind:<9} {'ok ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def record(out: Path, pattern: str = "kd-*/result.json") -> dict:
    return json.loads(next(out.glob(pattern)).read_text())


def one_line_refusal(result: subprocess.CompletedProcess) -> bool:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(len(data), middle + 64)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def killed_after_checkpoint(out: Path, extra: tuple[str, ...] = ()) -> Path:
    """A run killed (SIGKILL) once its first student checkpoint exists; returns that checkpoint."""
    process = start(*RUN, *extra, "--out", str(out))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        found = [p for p in out.glob("kd-*/checkpoint.pt") if p.with_name("checkpoint.pt.sha256").exists()]
        if found:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return found[0]
        time.sleep(0.05)
    raise RuntimeError("the run finished before its first checkpoint could be caught")


def kills(root: Path, reference: dict, count: int, rng: random.Random, duration: float) -> None:
    for trial in range(count):
        out = root / f"kill-{trial}"
        moment = rng.uniform(0.3, duration)
        process = start(*RUN, "--out", str(out))
        time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait()
        again = cli(*RUN, "--out", str(out))
        same = again.returncode == 0 and record(out)["metrics"] == reference["metrics"]
        debris = sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp-*"))
        judge("kill", f"SIGKILL at {moment:.1f} s", same and not debris,
              "same metrics, nothing left" if same and not debris else f"exit {again.returncode}, debris {debris}")


def damage(root: Path, reference: dict) -> None:
    """A damaged file is read by the next run that needs it: the run's own files by the same command,
    the cached teacher's by another method's run on the same teacher (fd here)."""
    done = root / "done"
    fd = ["run", "--method", "fd", *RUN[3:]]
    assert cli(*RUN, "--out", str(done)).returncode == 0
    clean = root / "fd-reference"
    shutil.copytree(done, clean)
    assert cli(*fd, "--out", str(clean)).returncode == 0
    fd_reference = record(clean, "fd-*/result.json")
    cases = {"teacher.pt": ("teachers/*/teacher.pt", fd, fd_reference, "fd-*/result.json"),
             "teacher.json": ("teachers/*/teacher.json", fd, fd_reference, "fd-*/result.json"),
             "result.json": ("kd-*/result.json", RUN, reference, "kd-*/result.json")}
    for name, (pattern, command, expected, made) in cases.items():
        out = root / f"damage-{name}"
        shutil.copytree(done, out)
        flip(next(out.glob(pattern)))
        result = cli(*command, "--out", str(out))
        told = [line for line in result.stdout.splitlines() if "damaged" in line or "cannot be read" in line]
        if one_line_refusal(result):
            judge("damage", name, True, result.stderr.strip()[:140])
        elif result.returncode == 0 and told and record(out, made)["metrics"] == expected["metrics"]:
            judge("damage", name, True, "made again: " + told[0][:120])
        else:
            judge("damage", name, False, f"exit {result.returncode}, nothing said: {result.stdout[-200:]!r}")
    out = root / "damage-checkpoint"
    flip(killed_after_checkpoint(out))
    result = cli(*RUN, "--out", str(out))
    judge("damage", "checkpoint.pt", one_line_refusal(result), result.stderr.strip()[:140])


def identity(root: Path, reference: dict) -> None:
    def copy_saved(source: Path, target: Path) -> None:
        shutil.copy(source, target)
        shutil.copy(source.with_name(source.name + ".sha256"), target.with_name(target.name + ".sha256"))

    out = root / "id-teacher"
    assert cli(*RUN, "--out", str(out)).returncode == 0 and cli(*RUN, "--seed", "1", "--out", str(out)).returncode == 0
    mine = out / "teachers" / reference["teacher"]["key"]
    other = next(folder for folder in (out / "teachers").iterdir() if folder != mine)
    copy_saved(other / "teacher.pt", mine / "teacher.pt")
    result = cli(*RUN, "--out", str(out), "--force")
    again = json.loads((out / reference["run_id"] / "result.json").read_text())
    judge("identity", "another teacher's teacher.pt", result.returncode == 0 and "training it again" in result.stdout
          and again["metrics"] == reference["metrics"], result.stdout.splitlines()[0][:140] if result.stdout else "")

    out = root / "id-checkpoint"
    other = killed_after_checkpoint(out, ("--set", "T=8"))
    (out / reference["run_id"]).mkdir(parents=True, exist_ok=True)
    copy_saved(other, out / reference["run_id"] / "checkpoint.pt")
    result = cli(*RUN, "--out", str(out))
    judge("identity", "another run's checkpoint.pt", one_line_refusal(result), result.stderr.strip()[:140])

    out = root / "id-record"
    assert cli(*RUN, "--out", str(out)).returncode == 0
    assert cli("run", "--method", "fd", *RUN[3:], "--out", str(out)).returncode == 0
    shutil.copy(next(out.glob("fd-*/result.json")), out / reference["run_id"] / "result.json")
    result = cli(*RUN, "--out", str(out))
    judge("identity", "another run's result.json", result.returncode == 0 and "running it again" in result.stdout
          and record(out)["method"] == "kd", result.stdout.splitlines()[0][:140] if result.stdout else "")

    plugin = root / "shadow_kd.py"
    plugin.write_text("from cmkd_bench.methods.no_kd import NoKD\nfrom cmkd_bench.registry import METHODS\n\n"
                      "@METHODS.register('kd', tasks=('classification',), description='not kd')\n"
                      "class NotKD(NoKD):\n    pass\n")
    result = cli(*RUN, "--plugin", str(plugin), "--out", str(root / "id-plugin"))
    judge("identity", "a plug-in re-registering kd", one_line_refusal(result) or
          (result.returncode == 0 and record(root / "id-plugin")["run_id"] != reference["run_id"]),
          (result.stderr.strip() or result.stdout.strip().splitlines()[-1])[:140])

    import numpy as np

    data = root / "one-class.npz"
    np.savez(data, rgb=np.random.rand(60, 8).astype("float32"), audio=np.random.rand(60, 6).astype("float32"),
             label=np.zeros(60, dtype=int))
    result = cli("run", "--method", "kd", "--dataset", "paired-npz", "--data-root", str(data), "--epochs", "1",
                 "--out", str(root / "id-npz"))
    judge("identity", "paired-npz with one class", one_line_refusal(result) and not (root / "id-npz").exists(),
          result.stderr.strip()[:140])


BAD = [
    ("unknown method", ["run", "--method", "nope", "--dataset", "synth-av"]),
    ("unknown dataset", ["run", "--method", "kd", "--dataset", "nope"]),
    ("unknown setting", ["run", "--method", "kd", "--dataset", "synth-av", "--set", "w_lo=2"]),
    ("NaN setting", ["run", "--method", "kd", "--dataset", "synth-av", "--set", "T=nan"]),
    ("overflowing setting", ["run", "--method", "kd", "--dataset", "synth-av", "--set", "T=1e308"]),
    ("negative epochs", ["run", "--method", "kd", "--dataset", "synth-av", "--epochs", "-1"]),
    ("seed out of range", ["run", "--method", "kd", "--dataset", "synth-av", "--seed", "-5"]),
    ("absent device", ["run", "--method", "kd", "--dataset", "synth-av", "--device", "cuda:7"]),
    ("missing data root", ["run", "--method", "kd", "--dataset", "crema-d", "--data-root", "/nonexistent"]),
    ("folder as teacher checkpoint: is a folder", ["run", "--method", "kd", "--dataset", "synth-av", "--teacher-checkpoint", "."]),
    ("folder as plug-in: is a folder", ["run", "--plugin", ".", "--method", "kd", "--dataset", "synth-av"]),
    ("missing suite file", ["suite", "/nonexistent.yaml"]),
]


def bad_inputs(root: Path) -> None:
    for name, args in BAD:
        out = root / f"bad-{len(RESULTS.get('bad input', []))}"
        result = cli(*args, "--out", str(out)) if args[0] in ("run", "suite") else cli(*args)
        said = "is a folder" not in name or "is a folder" in result.stderr  # a folder is named as one
        judge("bad input", name, one_line_refusal(result) and said and not out.exists(), result.stderr.strip()[:140])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="where the trials' runs go (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="cmkd-trials-"))
    began = time.perf_counter()
    reference_out = root / "reference"
    done = cli(*RUN, "--out", str(reference_out))
    assert done.returncode == 0, done.stderr
    duration = time.perf_counter() - began
    reference = record(reference_out)
    print(f"reference run: {duration:.1f} s; trials in {root}", flush=True)
    kills(root, reference, args.kills, random.Random(args.seed), duration)
    damage(root, reference)
    identity(root, reference)
    bad_inputs(root)
    print()
    for kind, outcomes in RESULTS.items():
        print(f"{kind}: {sum(outcomes)} passed, {len(outcomes) - sum(outcomes)} failed")
    total = [ok for outcomes in RESULTS.values() for ok in outcomes]
    print(f"{sum(total)} passed, {len(total) - sum(total)} failed")
    sys.exit(0 if all(total) else 1)


if __name__ == "__main__":
    main()
