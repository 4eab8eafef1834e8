"""`cmkd-bench prepare DATASET --src RAW --dst ROOT`: a raw release, as distributed, into the layout
the dataset's loader reads. Nothing is downloaded; the user points at their copy.

The prepared layout (one folder, passed to `cmkd-bench run --data-root ROOT`):

    ROOT/prepared.json          dataset, class names, how frames and spectrograms were made
    ROOT/clips.csv              clip,label,split,frames   (label: class id; split: train/val/test)
    ROOT/frames/CLIP/0000.jpg   the clip's frames (1 fps, or the middle frame), shorter side 256 px
    ROOT/audio/CLIP.npy         the clip's log spectrogram, float32, F x T
    ROOT/failed.csv             clip,reason for clips that are missing or did not decode

Preparation is resumable (a clip whose outputs exist is skipped; outputs are written to a
temporary name and renamed, so an interrupted clip is redone), runs clips in parallel processes
(`--workers`), and ends with a report of the clips that failed instead of stopping at the first.
A dataset declares how it is prepared by registering a `prepare=` callable in its metadata.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import click

from .errors import UserError
from .media import AudioFeatures, FrameSampling, MediaError, decode_audio

LAYOUT_VERSION = 1
CLIPS_CSV, INFO_JSON, FAILED_CSV = "clips.csv", "prepared.json", "failed.csv"
FRAMES_DIR, AUDIO_DIR = "frames", "audio"
JPEG_QUALITY = 95
SPLIT_CHOICES = ("train", "val", "test")


@dataclass(frozen=True)
class Clip:
    """One clip of the raw release: where its video and audio are, its class id and split."""

    name: str
    label: int
    split: str
    video: Path
    audio: Path


@dataclass
class ClipPlan:
    """What a dataset's split files list: class names, the clips found, and those missing from SRC."""

    classes: list[str]
    clips: list[Clip]
    missing: list[tuple[str, str]] = field(default_factory=list)  # (clip, reason)


def frame_folder(root: Path, clip: str) -> Path:
    return root / FRAMES_DIR / clip


def frame_file(root: Path, clip: str, index: int) -> Path:
    return frame_folder(root, clip) / f"{index:04d}.jpg"


def audio_file(root: Path, clip: str) -> Path:
    return root / AUDIO_DIR / f"{clip}.npy"


def clips_fingerprint(root: Path) -> str:
    """Names the prepared clips, labels and splits (not the path), for run ids."""
    return hashlib.sha256((root / CLIPS_CSV).read_bytes()).hexdigest()[:16]


# -- one clip (runs in a worker process) -----------------------------------------------------------
def _temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _write_frames(images: list, folder: Path) -> None:
    if not images:
        raise MediaError("no frames extracted")
    tmp = _temporary(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(tmp / f"{index:04d}.jpg", quality=JPEG_QUALITY)
    os.replace(tmp, folder)


def _write_array(array, path: Path) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def _frame_count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix == ".jpg")


def is_prepared(clip: Clip, dst: Path) -> bool:
    return frame_folder(dst, clip.name).is_dir() and audio_file(dst, clip.name).is_file()


def prepare_clip(clip: Clip, dst: Path, audio: AudioFeatures, frames: FrameSampling) -> tuple[str, int, str | None]:
    """Extract one clip's frames and spectrogram; returns (clip, frame count, error or None)."""
    folder, spectrogram = frame_folder(dst, clip.name), audio_file(dst, clip.name)
    try:
        if not folder.is_dir():
            _write_frames(frames.extract(clip.video), folder)
        if not spectrogram.is_file():
            _write_array(audio.compute(decode_audio(clip.audio, audio.rate)), spectrogram)
    except MediaError as exc:
        return clip.name, 0, str(exc)
    except Exception as exc:  # noqa: BLE001  one odd file must not stop thousands of others
        return clip.name, 0, f"{clip.video.name}: {type(exc).__name__}: {exc}"
    return clip.name, _frame_count(folder), None


# -- a whole release -------------------------------------------------------------------------------
@dataclass
class PrepareReport:
    prepared: dict[str, int]  # clip -> frame count
    skipped: int
    failed: list[tuple[str, str]]  # (clip, reason), missing ones included


def _clean_temporaries(dst: Path) -> None:
    for folder in (dst / FRAMES_DIR, dst / AUDIO_DIR):
        if folder.is_dir():
            for stale in folder.glob("*.tmp-*"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=not console.is_terminal)


def _run_clips(todo: list[Clip], dst: Path, audio: AudioFeatures, frames: FrameSampling, workers: int,
               advance: Callable[[], None]) -> Iterable[tuple[str, int, str | None]]:
    if workers <= 1 or len(todo) <= 1:
        for clip in todo:
            yield prepare_clip(clip, dst, audio, frames)
            advance()
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(prepare_clip, clip, dst, audio, frames) for clip in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
                advance()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


@dataclass(frozen=True)
class ClipPreparer:
    """How one dataset is prepared: its split-file reader (`plan`), spectrogram and frame recipes."""

    dataset: str
    plan: Callable[[Path], ClipPlan]
    audio: AudioFeatures
    frames: FrameSampling

    def __call__(self, src: Path, dst: Path, workers: int, force: bool, console) -> PrepareReport:
        require_pyav()
        plan = self.plan(src)
        if force:
            for clip in plan.clips:
                shutil.rmtree(frame_folder(dst, clip.name), ignore_errors=True)
                audio_file(dst, clip.name).unlink(missing_ok=True)
        dst.mkdir(parents=True, exist_ok=True)
        _clean_temporaries(dst)
        done = {c.name: _frame_count(frame_folder(dst, c.name)) for c in plan.clips if is_prepared(c, dst)}
        todo = [c for c in plan.clips if c.name not in done]
        failed = list(plan.missing)
        prepared = dict(done)
        with _progress(console) as bar:
            task = bar.add_task(f"prepare {self.dataset}", total=len(plan.clips), completed=len(done))
            for name, count, error in _run_clips(todo, dst, self.audio, self.frames, workers, lambda: bar.advance(task)):
                if error is None:
                    prepared[name] = count
                else:
                    failed.append((name, error))
        report = PrepareReport(prepared, len(done), sorted(failed))  # sorted: the same report whatever the workers
        self._write_layout(plan, dst, report)
        return report

    def _write_layout(self, plan: ClipPlan, dst: Path, report: PrepareReport) -> None:
        if not report.prepared:
            raise UserError(f"{self.dataset}: no clip could be prepared ({len(report.failed)} failed; first: "
                            f"{report.failed[0][0]}: {report.failed[0][1]})" if report.failed else
                            f"{self.dataset}: the split files list no clips")
        rows = [(c.name, c.label, c.split, report.prepared[c.name]) for c in plan.clips if c.name in report.prepared]
        write_csv(dst / CLIPS_CSV, ("clip", "label", "split", "frames"), rows)
        write_csv(dst / FAILED_CSV, ("clip", "reason"), report.failed)
        info = {"dataset": self.dataset, "layout": LAYOUT_VERSION, "classes": plan.classes,
                "audio": self.audio.describe(), "frames": self.frames.describe(),
                "clips": len(rows), "failed": len(report.failed)}
        write_json(dst / INFO_JSON, info)


def require_pyav() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise UserError("PyAV is needed to decode video and audio; run `pip install av` (its wheels include FFmpeg)") from None


def write_csv(path: Path, header: tuple[str, ...], rows: Iterable[tuple]) -> None:
    tmp = _temporary(path)
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    tmp = _temporary(path)
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_info(root: Path, dataset: str) -> dict:
    """The prepared folder's description, checked to belong to `dataset`; one clear line otherwise."""
    hint = f"run `cmkd-bench prepare {dataset} --src RAW_DIR --dst {root}` first"
    if not root.is_dir():
        raise UserError(f"{dataset}: data root {str(root)!r} is not a folder; {hint}")
    for name in (INFO_JSON, CLIPS_CSV):
        if not (root / name).is_file():
            raise UserError(f"{dataset}: {str(root / name)!r} is missing, so {str(root)!r} is not a prepared {dataset} folder; {hint}")
    try:
        info = json.loads((root / INFO_JSON).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{dataset}: {str(root / INFO_JSON)!r} is unreadable ({exc}); {hint}") from None
    if info.get("dataset") != dataset:
        raise UserError(f"{dataset}: {str(root)!r} was prepared for {info.get('dataset')!r}, not {dataset!r}; {hint}")
    if info.get("layout") != LAYOUT_VERSION:
        raise UserError(f"{dataset}: {str(root)!r} has prepared layout {info.get('layout')}, this version reads {LAYOUT_VERSION}; {hint}")
    return info


# -- the command -----------------------------------------------------------------------------------
def _report(console, dataset: str, dst: Path, report: PrepareReport, shown: int = 15) -> None:
    console.print(f"prepared {len(report.prepared)} {dataset} clips in {dst} "
                  f"({report.skipped} were already done); use `--data-root {dst}`", soft_wrap=True)
    if not report.failed:
        return
    console.print(f"[yellow]{len(report.failed)} clips failed or are missing[/yellow] "
                  f"(all listed in {dst / FAILED_CSV}); they are left out of the splits:", soft_wrap=True)
    for name, reason in report.failed[:shown]:
        console.print(f"  {name}: {reason}", soft_wrap=True, markup=False, highlight=False)
    if len(report.failed) > shown:
        console.print(f"  ... and {len(report.failed) - shown} more")


@click.command("prepare")
@click.argument("dataset")
@click.option("--src", required=True, type=click.Path(), help="The raw release as distributed (see the dataset's docs).")
@click.option("--dst", required=True, type=click.Path(), help="Where the prepared data goes; later `run --data-root DST`.")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel processes.  [default: all CPU cores]")
@click.option("--force", is_flag=True, help="Redo clips that are already prepared.")
def prepare_command(dataset: str, src: str, dst: str, workers: int | None, force: bool) -> None:
    """Turn DATASET's raw release (wav/flv/mp4 as distributed) into the layout its loader reads."""
    from rich.console import Console

    from .catalog import DATASETS, load_all

    load_all()
    entry = DATASETS.get(dataset)
    preparer = entry.meta.get("prepare")
    if preparer is None:
        ready = ", ".join(e.name for e in DATASETS if "prepare" in e.meta)
        raise UserError(f"dataset {entry.name!r} needs no preparation; `prepare` is for {ready}")
    source = Path(src)
    if not source.is_dir():
        raise UserError(f"--src {src!r} is not a folder; pass the folder of your {entry.name} copy")
    console = Console(highlight=False)
    report = preparer(source, Path(dst), workers or os.cpu_count() or 1, force, console)
    if report is not None:
        _report(console, entry.name, Path(dst), report)
