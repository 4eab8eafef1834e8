"""ave: Audio-Visual Event dataset (Tian et al., ECCV 2018), 28 event classes, 10 s YouTube clips.

The release (github.com/YapengTian/AVE-ECCV18, "AVE_Dataset") has the videos `AVE/VIDEOID.mp4`
and the official split files `Annotations.txt`, `trainSet.txt`, `valSet.txt`, `testSet.txt`
(3,339 / 402 / 402 clips; lines `Category&VideoID&Quality&StartTime&EndTime`). Pass the
AVE_Dataset folder as --src; the suite ships none of it. Class ids are the 28 categories of
Annotations.txt in sorted order. Videos are found anywhere under --src by their VideoID.

    cmkd-bench prepare ave --src AVE_Dataset/ --dst data/ave
    cmkd-bench run --method fd --dataset ave --data-root data/ave

Preprocessing (OGM-GE / C2KD reference code): frames at 1 fps; one frame per clip, random at
train (with RandomResizedCrop and flip), the middle one at test, 224 px, ImageNet normalisation;
`--set frames=3` stacks three. Audio: the track resampled to 16 kHz and looped to 10 s, log
spectrogram with scipy.signal.spectrogram (nperseg 512, noverlap 353): 1 x 257 x 1004,
standardised per clip; `--set seconds=S` keeps the first S seconds.
"""

from __future__ import annotations

from pathlib import Path

from cmkd_bench.errors import UserError
from cmkd_bench.media import VIDEO_SUFFIXES, AudioFeatures, FrameSampling
from cmkd_bench.prepare import Clip, ClipPlan, ClipPreparer
from cmkd_bench.registry import DATASETS

from ._av_common import ClipOptions, DecodedPairs, build_clip_dataset, index_files, require_file

NUM_CLASSES = 28
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
WHERE = "--src must be the AVE_Dataset folder of github.com/YapengTian/AVE-ECCV18 (it holds the split files)"
AUDIO = AudioFeatures("spectrogram", rate=16000, seconds=10.0, params=(("noverlap", 353), ("nperseg", 512)))


def _read_annotations(path: Path) -> list[tuple[str, str]]:
    """(category, video id) per line of an AVE split file; the header line is skipped."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.strip().split("&")
        if not line.strip() or fields[:2] == ["Category", "VideoID"]:
            continue
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise UserError(f"ave: {str(path)!r} line {number} is not `Category&VideoID&Quality&StartTime&EndTime`")
        rows.append((fields[0], fields[1]))
    return rows


def plan(src: Path) -> ClipPlan:
    annotations = _read_annotations(require_file("ave", src / "Annotations.txt", WHERE))
    classes = sorted({category for category, _ in annotations})
    if len(classes) != NUM_CLASSES:
        raise UserError(f"ave: {str(src / 'Annotations.txt')!r} lists {len(classes)} categories; AVE has {NUM_CLASSES}")
    videos = index_files(src, VIDEO_SUFFIXES)
    clips, missing = [], []
    for split, file_name in SPLIT_FILES.items():
        for category, video_id in _read_annotations(require_file("ave", src / file_name, WHERE)):
            if category not in classes:
                raise UserError(f"ave: {file_name} names category {category!r}, which Annotations.txt does not list")
            if video_id not in videos:
                missing.append((video_id, f"no video {video_id}.mp4 under {src}"))
                continue
            clips.append(Clip(video_id, classes.index(category), split, videos[video_id], videos[video_id]))
    return ClipPlan(classes, clips, missing)


PREPARER = ClipPreparer("ave", plan, AUDIO, FrameSampling(mode="fps", fps=1.0))


@DATASETS.register("ave", tasks=("classification",), prepare=PREPARER,
                   description="AVE events (28 classes): 1 fps frame + 10 s log spectrogram; official 3339/402/402 split",
                   reference="Tian et al., Audio-Visual Event Localization in Unconstrained Videos, ECCV 2018; "
                             "preprocessing of OGM-GE (CVPR 2022) / C2KD (CVPR 2024)")
def ave(data_root: Path | None, image_size: int = 224, frames: int = 1, seconds: float = 10.0, augment: bool = True,
        standardize: bool = True, num_workers: int = 4) -> DecodedPairs:
    options = ClipOptions(image_size=image_size, frames=frames, augment=augment, standardize=standardize)
    recorded = {"image_size": image_size, "frames": frames, "seconds": seconds, "augment": augment, "standardize": standardize}
    return build_clip_dataset("ave", data_root, num_classes=NUM_CLASSES, teacher="audio", student="visual",
                              options=options, seconds=seconds, val_fraction=0.1, split_seed=0,
                              num_workers=num_workers, recorded=recorded)
