"""`cmkd-bench prepare DATASET --src RAW --dst ROOT`: a raw release, as distributed, into the layout
the dataset's loader reads. Nothing is downloaded; the user points at their copy.

The prepared layout (one folder, passed to `cmkd-bench run --data-root ROOT`) is described, and
its paths are named, in cmkd_bench/data/clips.py, which the loaders read it with.

The waveform, not a spectrogram, is stored: a dataset's named protocols (sample rate, STFT,
window, standardisation; see each dataset's docstring) are applied when a sample is read, so one
prepared folder serves every protocol of its dataset.

Preparation is resumable (a clip whose outputs exist is skipped; outputs are written to a
temporary name and renamed, so an interrupted clip is redone), runs clips in parallel processes
(`--workers`), and ends with a summary: one line per kind of problem, with its count and the file
listing the clips, instead of stopping at the first. A dataset declares how it is prepared by
registering a `prepare=` callable in its metadata.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..artefacts.files import TEMPORARY_GLOB, temporary, write_atomic, write_csv_atomic, write_json_atomic
from ..errors import UserError
from .checksums import read_checksums, write_checksums
from .clips import (AUDIO_DIR, CLIPS_CSV, EXCLUDED_CSV, FAILED_CSV, FRAMES_DIR, INFO_JSON, LAYOUT_VERSION,
                    audio_file, frame_folder)
from .media import FrameSampling, MediaError, decode_audio, is_lfs_pointer

JPEG_QUALITY = 95
SPLIT_CHOICES = ("train", "val", "test")
# the kinds of problem a listed clip can have, in the order the summary reports them
MISSING, LFS_POINTER, UNDECODABLE, TOO_SHORT = "missing", "lfs-pointer", "undecodable", "too-few-frames"


@dataclass(frozen=True)
class Clip:
    """One clip of the raw release: where its video and audio are, its class id, split and segment."""

    name: str
    label: int
    split: str
    video: Path
    audio: Path
    start: float | None = None  # the annotated segment, in seconds (AVE's StartTime, EndTime)
    end: float | None = None


@dataclass
class ClipPlan:
    """What a dataset's split files list: class names, the clips found, and what was left out.

    missing: (clip, reason) for listed clips whose files are not under SRC. excluded: (clip,
    split, reason) for split-file rows the dataset's split rule drops (a duplicate, an ambiguous
    label). notes: one-line facts for the summary (the split rule's counts).
    """

    classes: list[str]
    clips: list[Clip]
    missing: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- one clip (runs in a worker process) -----------------------------------------------------------
def _write_frames(images: list[Image.Image], folder: Path) -> None:
    if not images:
        raise MediaError("no frames extracted")
    tmp = temporary(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(tmp / f"{index:04d}.jpg", quality=JPEG_QUALITY)
    try:
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():  # not another process finishing the same folder first
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _write_array(array: np.ndarray, path: Path) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    write_atomic(path, save)


def _frame_count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix == ".jpg")


def is_prepared(clip: Clip, dst: Path) -> bool:
    return frame_folder(dst, clip.name).is_dir() and audio_file(dst, clip.name).is_file()


def prepare_clip(clip: Clip, dst: Path, rate: int, frames: FrameSampling) -> tuple[str, int, str | None]:
    """Extract one clip's frames and waveform; returns (clip, frame count, error or None)."""
    folder, waveform = frame_folder(dst, clip.name), audio_file(dst, clip.name)
    try:
        if not folder.is_dir():
            _write_frames(frames.extract(clip.video), folder)
        if not waveform.is_file():
            wave = decode_audio(clip.audio, rate)
            if clip.start is not None and len(wave) <= int(rate * clip.start):
                raise MediaError(f"{clip.audio}: the audio track ends at {len(wave) / rate:.2f} s, before the "
                                 f"annotated segment starts ({clip.start:g} s)")
            _write_array(wave, waveform)
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
    failed: list[tuple[str, str, str]]  # (clip, problem, detail): missing ones included
    excluded: list[tuple[str, str, str]] = field(default_factory=list)  # (clip, split, reason)
    notes: list[str] = field(default_factory=list)

    def problems(self, kind: str) -> list[tuple[str, str, str]]:
        return [row for row in self.failed if row[1] == kind]


def _clean_temporaries(dst: Path) -> None:
    for folder in (dst / FRAMES_DIR, dst / AUDIO_DIR):
        if folder.is_dir():
            for stale in folder.glob(TEMPORARY_GLOB):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=not console.is_terminal)


def _run_clips(todo: list[Clip], dst: Path, rate: int, frames: FrameSampling, workers: int,
               advance: Callable[[], None]) -> Iterable[tuple[str, int, str | None]]:
    if workers <= 1 or len(todo) <= 1:
        for clip in todo:
            yield prepare_clip(clip, dst, rate, frames)
            advance()
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(prepare_clip, clip, dst, rate, frames) for clip in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
                advance()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _lfs_pointers(clips: list[Clip]) -> dict[str, Path]:
    """Clips whose video or audio file is a Git LFS pointer, with that file."""
    found = {}
    for clip in clips:
        for path in dict.fromkeys((clip.video, clip.audio)):
            if is_lfs_pointer(path):
                found[clip.name] = path
                break
    return found


def _check_destination(dataset: str, dst: Path, force: bool) -> None:
    info = dst / INFO_JSON
    if force or not info.is_file():
        return
    try:
        layout = json.loads(info.read_text()).get("layout")
    except (OSError, ValueError, AttributeError):
        layout = None
    if layout != LAYOUT_VERSION:
        raise UserError(f"{dataset}: {str(dst)!r} holds a folder prepared in layout {layout} (this version writes "
                        f"{LAYOUT_VERSION}); add --force to prepare it again there, or choose another --dst")


@dataclass(frozen=True)
class ClipPreparer:
    """How one dataset is prepared: its split-file reader (`plan`), the rate its waveforms are
    stored at, which frames are stored, and the fewest frames a clip needs (with the reason)."""

    dataset: str
    plan: Callable[[Path], ClipPlan]
    rate: int
    frames: FrameSampling
    min_frames: int = 1
    min_frames_reason: str = ""
    # writes the packed store (cmkd_bench/data/packed.py) from the prepared files: (root, frame size, advance)
    pack: Callable[[Path, int, Callable[[], None]], dict] | None = None

    def pack_store(self, dst: Path, size: int, console: Console) -> None:
        """Add (or rewrite) the packed store of a prepared folder, from its JPEG frames and waveforms alone
        (the caller rewrites checksums.json after it). The store records the content fingerprint, which
        reads checksums.json: a folder without one (prepared before checksums) gets it first."""
        if self.pack is None or size <= 0:
            return
        from .clips import read_info

        clips = read_info(dst, self.dataset).get("clips", 0)
        if read_checksums(dst) is None:
            write_checksums(dst)
        with _progress(console) as bar:
            task = bar.add_task(f"pack {self.dataset} at {size} px", total=clips)
            self.pack(dst, size, lambda: bar.advance(task))

    def __call__(self, src: Path, dst: Path, workers: int, force: bool, console: Console,
                 pack_size: int = 0) -> PrepareReport:
        require_pyav()
        plan = self.plan(src)
        names = [clip.name for clip in plan.clips]
        if len(set(names)) != len(names):  # the split rule keeps one row per clip; two would share a folder
            raise ValueError(f"{self.dataset}: the plan lists a clip twice")
        failed = [(name, MISSING, reason) for name, reason in plan.missing]
        pointers = _lfs_pointers(plan.clips)
        if pointers:
            failed += [(name, LFS_POINTER, f"{path}: a Git LFS pointer file, not the media") for name, path in pointers.items()]
            plan.clips = [clip for clip in plan.clips if clip.name not in pointers]
        if not plan.clips:
            raise UserError(self._nothing_to_prepare(src, failed))
        _check_destination(self.dataset, dst, force)
        if force:
            for clip in plan.clips:
                shutil.rmtree(frame_folder(dst, clip.name), ignore_errors=True)
                audio_file(dst, clip.name).unlink(missing_ok=True)
        dst.mkdir(parents=True, exist_ok=True)
        _clean_temporaries(dst)
        done = {c.name: _frame_count(frame_folder(dst, c.name)) for c in plan.clips if is_prepared(c, dst)}
        todo = [c for c in plan.clips if c.name not in done]
        prepared = dict(done)
        with _progress(console) as bar:
            task = bar.add_task(f"prepare {self.dataset}", total=len(plan.clips), completed=len(done))
            for name, count, error in _run_clips(todo, dst, self.rate, self.frames, workers, lambda: bar.advance(task)):
                if error is None:
                    prepared[name] = count
                else:
                    failed.append((name, UNDECODABLE, error))
        for name, count in list(prepared.items()):
            if count < self.min_frames:
                failed.append((name, TOO_SHORT, f"{count} frame(s) at 1 fps; {self.min_frames_reason}"))
                del prepared[name]
        # sorted: the same report whatever the workers
        report = PrepareReport(prepared, len(done), sorted(failed), sorted(plan.excluded), list(plan.notes))
        self._write_layout(plan, dst, report)
        # the checksums first: the store records the content fingerprint they give (data.checksums), which
        # leaves the store out, so the same fingerprint names the content before and after packing
        write_checksums(dst)
        if pack_size > 0 and self.pack is not None:
            self.pack_store(dst, pack_size, console)
            write_checksums(dst)  # again, with the store's files: verified like every file before use
        return report

    def _nothing_to_prepare(self, src: Path, failed: list[tuple[str, str, str]]) -> str:
        pointers = [row for row in failed if row[1] == LFS_POINTER]
        if pointers:
            return (f"{self.dataset}: the media under {str(src)!r} are Git LFS pointer files, not audio or video "
                    f"({len(pointers)} clips, e.g. {pointers[0][2].split(': ')[0]}); run `git lfs pull` in that clone, "
                    f"then prepare again")
        if failed:
            return (f"{self.dataset}: none of the {len(failed)} clips the split files list is under {str(src)!r} "
                    f"(first: {failed[0][0]}: {failed[0][2]}); point --src at the folder that holds the media")
        return f"{self.dataset}: the split files list no clips"

    def _write_layout(self, plan: ClipPlan, dst: Path, report: PrepareReport) -> None:
        if not report.prepared:  # failed.csv, for the list; no prepared.json, so nothing reads this folder as prepared
            write_csv_atomic(("clip", "problem", "detail"), report.failed, dst / FAILED_CSV)
            first = report.failed[0]
            raise UserError(f"{self.dataset}: no clip could be prepared ({len(report.failed)} failed, listed in "
                            f"{dst / FAILED_CSV}; first: {first[0]}: {first[2]})")

        def seconds(value: float | None) -> str:
            return "" if value is None else f"{value:g}"

        rows = [(c.name, c.label, c.split, report.prepared[c.name], seconds(c.start), seconds(c.end))
                for c in plan.clips if c.name in report.prepared]
        write_csv_atomic(("clip", "label", "split", "frames", "start", "end"), rows, dst / CLIPS_CSV)
        write_csv_atomic(("clip", "problem", "detail"), report.failed, dst / FAILED_CSV)
        write_csv_atomic(("clip", "split", "reason"), report.excluded, dst / EXCLUDED_CSV)
        counts = {kind: len(report.problems(kind)) for kind in (MISSING, LFS_POINTER, UNDECODABLE, TOO_SHORT)}
        info = {"dataset": self.dataset, "layout": LAYOUT_VERSION, "classes": plan.classes,
                "audio": {"stored": "waveform", "rate": self.rate}, "frames": self.frames.describe(),
                "clips": len(rows), "failed": len(report.failed), "problems": counts,
                "excluded": len(report.excluded), "notes": report.notes}
        write_json_atomic(info, dst / INFO_JSON)


def require_pyav() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise UserError("PyAV is needed to decode video and audio; run `pip install av` (its wheels include FFmpeg)") from None


# -- the summary (`cmkd-bench prepare` prints it) --------------------------------------------------
def print_report(console: Console, dataset: str, dst: Path, report: PrepareReport) -> None:
    """The summary: what was prepared, then one line per kind of problem, each with its count and
    the file that lists the clips (never a line per clip)."""
    def say(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False, highlight=False)

    say(f"prepared {len(report.prepared)} {dataset} clips in {dst} ({report.skipped} were already done); "
        f"use `--data-root {dst}`")
    for note in report.notes:
        say(f"{dataset}: {note}")
    listed = dst / FAILED_CSV
    missing, pointers = report.problems(MISSING), report.problems(LFS_POINTER)
    broken, short = report.problems(UNDECODABLE), report.problems(TOO_SHORT)
    if missing:
        say(f"{len(missing)} clips listed in the split files are missing from --src and left out "
            f"(listed in {listed}; first: {missing[0][0]}: {missing[0][2]})")
    if pointers:
        say(f"{len(pointers)} clips are Git LFS pointer files, not media, and left out (listed in {listed}); "
            f"run `git lfs pull` in the clone and prepare again")
    if broken:
        say(f"{len(broken)} clips did not decode and are left out (listed in {listed}; first: {broken[0][0]}: {broken[0][2]})")
    if short:
        say(f"{len(short)} clips have too few frames and are left out (listed in {listed}; first: {short[0][0]}: {short[0][2]})")
    if report.excluded:
        say(f"{len(report.excluded)} split-file rows are left out by {dataset}'s split rule (listed in {dst / EXCLUDED_CSV})")
