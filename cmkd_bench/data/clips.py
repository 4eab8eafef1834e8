"""The prepared-clip layout: what `cmkd-bench prepare` writes (cmkd_bench/data/prepare.py) and the
audio-visual loaders read (datasets/), in one place.

    ROOT/prepared.json            dataset, class names, how frames and waveforms were stored, counts
    ROOT/clips.csv                clip,label,split,frames,start,end  (label: class id; split: train/val/test;
                                  start/end: the annotated segment in seconds, empty where none)
    ROOT/frames/CLIP/0000.jpg     the clip's frames (frame k at second k, 1 fps; or the middle frame), shorter side 256 px
    ROOT/waveforms/CLIP.npy       the clip's whole audio track, mono float32 at the dataset's storage rate
    ROOT/failed.csv               clip,problem,detail: clips listed but missing, Git LFS pointers, undecodable, too short
    ROOT/excluded.csv             clip,split,reason: split-file rows the dataset's split rule leaves out (AVE's duplicates)
    ROOT/checksums.json           every file's SHA-256, size and time, written last (cmkd_bench/data/checksums.py)
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .checksums import check_prepared

LAYOUT_VERSION = 2  # 1 stored spectrograms in audio/; 2 stores waveforms in waveforms/
CLIPS_CSV, INFO_JSON, FAILED_CSV, EXCLUDED_CSV = "clips.csv", "prepared.json", "failed.csv", "excluded.csv"
FRAMES_DIR, AUDIO_DIR = "frames", "waveforms"


def frame_folder(root: Path, clip: str) -> Path:
    return root / FRAMES_DIR / clip


def frame_file(root: Path, clip: str, index: int) -> Path:
    return frame_folder(root, clip) / f"{index:04d}.jpg"


def audio_file(root: Path, clip: str) -> Path:
    return root / AUDIO_DIR / f"{clip}.npy"


def clips_fingerprint(root: Path) -> str:
    """Names the prepared content (not the path), for run ids: every prepared file's recorded SHA-256
    (checksums.json), or for a folder prepared before checksums existed its clips, labels and splits."""
    from .checksums import content_fingerprint

    return content_fingerprint(root) or hashlib.sha256((root / CLIPS_CSV).read_bytes()).hexdigest()[:16]


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
        raise UserError(f"{dataset}: {str(root)!r} has prepared layout {info.get('layout')}, this version reads "
                        f"{LAYOUT_VERSION}; run `cmkd-bench prepare {dataset} --src RAW_DIR --dst {root} --force`")
    return info


@dataclass
class PreparedClips:
    """A prepared folder's clips.csv, one array entry per clip."""

    root: Path
    classes: list[str]
    info: dict
    names: list[str]
    labels: np.ndarray
    splits: np.ndarray
    frame_counts: np.ndarray
    segments: np.ndarray  # N x 2 seconds, NaN where the clip has no annotated segment


def read_prepared(dataset: str, root: Path | None, num_classes: int) -> PreparedClips:
    if root is None:
        raise UserError(f"dataset {dataset} needs --data-root DIR, the folder written by "
                        f"`cmkd-bench prepare {dataset} --src RAW_DIR --dst DIR`")
    info = read_info(root, dataset)
    check_prepared(root, dataset)  # a damaged or rewritten file is refused before anything trains
    if len(info.get("classes", [])) != num_classes:
        raise UserError(f"{dataset}: {str(root)!r} has {len(info.get('classes', []))} classes, {dataset} has {num_classes}; prepare it again")
    with open(root / CLIPS_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))

    def seconds(value: str | None) -> float:
        return float(value) if value not in (None, "") else float("nan")

    try:
        names = [r["clip"] for r in rows]
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        frames = np.array([int(r["frames"]) for r in rows], dtype=np.int64)
        splits = np.array([r["split"] for r in rows])
        segments = np.array([(seconds(r.get("start")), seconds(r.get("end"))) for r in rows], dtype=np.float64).reshape(-1, 2)
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{dataset}: {str(root / CLIPS_CSV)!r} is damaged; prepare the dataset again") from None
    return PreparedClips(root, info["classes"], info, names, labels, splits, frames, segments)
