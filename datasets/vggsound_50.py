"""vggsound-50: the 50-class subset of VGGSound (Chen et al., ICASSP 2020) used by C2KD (Huo et al., CVPR 2024).

VGGSound is distributed as a list, `vggsound.csv` (www.robots.ox.ac.uk/~vgg/data/vggsound/, CC BY
4.0; rows `YouTubeID,start_seconds,label,train|test`), plus the 10 s clips the user downloaded,
named `YouTubeID_START.mp4` with START zero-padded to 6 digits (also accepted: unpadded START,
`YouTubeID_START_END`, or just `YouTubeID`), anywhere under --src, with the audio track inside
(a same-named .wav/.flac beside it is used instead when present). The 50-class subset is given
by a class list, `vggsound50_classes.txt`: the 50 VGGSound label strings of C2KD's subset, one
per line, in class-id order (take it from C2KD's release; the suite does not ship one). Put
both files in --src. C2KD's subset has 25,835 train / 2,500 test clips; clips missing from your
copy are reported by `prepare`, and comparisons with the paper hold only for a complete copy.
VGGSound has no validation split: a seeded, stratified `val_fraction` of train is held out.

    cmkd-bench prepare vggsound-50 --src VGGSound/ --dst data/vggsound-50
    cmkd-bench run --method fd --dataset vggsound-50 --data-root data/vggsound-50

Preprocessing (C2KD): frames at 1 fps, one per clip, random at train (RandomResizedCrop and
flip), the middle one at test, 224 px, ImageNet normalisation (`--set frames=3` stacks three).
Audio at 16 kHz, a 5 s window of a centred STFT with window 256 and hop 128, log magnitude:
1 x 129 x 626, standardised per clip. `prepare` stores the STFT of the whole clip looped to
10 s (1251 frames); the loader takes a random 5 s window at train and the centre one at test.
`--set seconds=10` uses the whole clip, as the original VGGSound baseline does.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cmkd_bench.errors import UserError
from cmkd_bench.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES, AudioFeatures, FrameSampling
from cmkd_bench.prepare import Clip, ClipPlan, ClipPreparer
from cmkd_bench.registry import DATASETS

from ._av_common import ClipOptions, DecodedPairs, build_clip_dataset, index_files, require_file

NUM_CLASSES = 50
LIST_FILE, CLASS_FILE = "vggsound.csv", "vggsound50_classes.txt"
WHERE = {LIST_FILE: "get vggsound.csv from www.robots.ox.ac.uk/~vgg/data/vggsound/ and put it in --src",
         CLASS_FILE: "put C2KD's list of the 50 VGGSound classes (one label per line) in --src as vggsound50_classes.txt"}
AUDIO = AudioFeatures("stft", rate=16000, seconds=10.0, params=(("noverlap", 128), ("nperseg", 256)))


def _read_classes(src: Path) -> list[str]:
    path = require_file("vggsound-50", src / CLASS_FILE, WHERE[CLASS_FILE])
    classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(classes) != NUM_CLASSES or len(set(classes)) != NUM_CLASSES:
        raise UserError(f"vggsound-50: {str(path)!r} lists {len(set(classes))} distinct classes; it needs {NUM_CLASSES}, one per line")
    return classes


def _read_list(src: Path) -> list[tuple[str, int, str, str]]:
    """(YouTube id, start second, label, split) per row of vggsound.csv."""
    path = require_file("vggsound-50", src / LIST_FILE, WHERE[LIST_FILE])
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) < 4 or not row[1].strip().lstrip("-").isdigit():
                if number == 1:  # a header line
                    continue
                raise UserError(f"vggsound-50: {str(path)!r} line {number} is not `YouTubeID,start_seconds,label,split`")
            rows.append((row[0].strip(), int(row[1]), row[2].strip(), row[3].strip()))
    return rows


def _find(files: dict[str, Path], video_id: str, start: int) -> Path | None:
    for stem in (f"{video_id}_{start:06d}", f"{video_id}_{start}", f"{video_id}_{start:06d}_{start + 10:06d}", video_id):
        if stem in files:
            return files[stem]
    return None


def plan(src: Path) -> ClipPlan:
    classes = _read_classes(src)
    listed = [row for row in _read_list(src) if row[2] in classes]
    unknown = set(classes) - {row[2] for row in listed}
    if unknown:
        raise UserError(f"vggsound-50: class {sorted(unknown)[0]!r} of {CLASS_FILE} has no row in {LIST_FILE}; check the spelling")
    videos, audios = index_files(src, VIDEO_SUFFIXES), index_files(src, AUDIO_SUFFIXES)
    clips, missing = [], []
    for video_id, start, label, split in listed:
        name = f"{video_id}_{start:06d}"
        if split not in ("train", "test"):
            raise UserError(f"vggsound-50: {LIST_FILE} gives clip {name} the split {split!r}; expected train or test")
        video = _find(videos, video_id, start)
        if video is None:
            missing.append((name, f"no video {name}.mp4 under {src}"))
            continue
        clips.append(Clip(name, classes.index(label), split, video, _find(audios, video_id, start) or video))
    return ClipPlan(classes, clips, missing)


PREPARER = ClipPreparer("vggsound-50", plan, AUDIO, FrameSampling(mode="fps", fps=1.0))


@DATASETS.register("vggsound-50", aliases=("vggsound50",), tasks=("classification",), prepare=PREPARER,
                   description="VGGSound 50-class subset (C2KD): 1 fps frame + 5 s log STFT (129 x 626)",
                   reference="Chen et al., VGGSound, ICASSP 2020; 50-class subset and preprocessing of C2KD (Huo et al., CVPR 2024)")
def vggsound_50(data_root: Path | None, image_size: int = 224, frames: int = 1, seconds: float = 5.0,
                augment: bool = True, standardize: bool = True, val_fraction: float = 0.1, split_seed: int = 0,
                num_workers: int = 4) -> DecodedPairs:
    options = ClipOptions(image_size=image_size, frames=frames, audio_window="random", augment=augment,
                          standardize=standardize)
    recorded = {"image_size": image_size, "frames": frames, "seconds": seconds, "augment": augment,
                "standardize": standardize, "val_fraction": val_fraction, "split_seed": split_seed}
    return build_clip_dataset("vggsound-50", data_root, num_classes=NUM_CLASSES, teacher="audio", student="visual",
                              options=options, seconds=seconds, val_fraction=val_fraction, split_seed=split_seed,
                              num_workers=num_workers, recorded=recorded)
