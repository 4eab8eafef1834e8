"""ave: AVE, Audio-Visual Event localisation (Tian et al., ECCV 2018), 28 event classes.

The release (the AVE_Dataset folder linked from github.com/YapengTian/AVE-ECCV18) holds the 4,143
10 s videos `AVE/VIDEOID.mp4` and the official split files `trainSet.txt` (3,339 rows),
`valSet.txt` (402) and `testSet.txt` (402), rows `Category&VideoID&Quality&StartTime&EndTime`
(e.g. `Church bell&RUhOCu3LNXM&good&0&10`), no header (one is skipped if present), LF or CRLF,
read with utf-8-sig. Only the three split files are needed (Annotations.txt is their union). Put
them in --src with the videos anywhere under it. Class ids: the order in which categories first
appear in testSet.txt, as C2KD's loader numbers them (huofushuo/C2KD, ave/utils/AVEDataset.py).

Split rule (the suite's, applied once before any clip is prepared; every step is listed in
ROOT/excluded.csv and counted in prepare's summary). 45 VideoIDs occur more than once in the
official files, always with different categories (in the copies read, from C2KD's
ave/utils/data/AVE/: 27 twice within trainSet.txt, 1 within valSet.txt, 10 in both trainSet.txt
and valSet.txt, 8 in both trainSet.txt and testSet.txt). C2KD keeps the first row per VideoID and
split (`if audio_path not in self.audio`), OGM-GE the last (GeWu-Lab/OGM-GE_CVPR2022,
dataset/dataset.py, "delete repeated labels"); both then train on a label the official files
contradict, and both keep a clip in train that they test on. The suite instead drops a VideoID
listed with two categories within one split from that split, and keeps a VideoID of train and
val/test only in val/test: test keeps its 402 clips, val 400, train 3,267, and no run trains on an
ambiguous label or on a clip it is evaluated on. One row of trainSet.txt (VWi2ENBuTbw, line 64)
has the empty segment 0-0 s, for which C2KD's extraction yields no audio: it is left out too.

    cmkd-bench prepare ave --src AVE_Dataset/ --dst data/ave
    cmkd-bench run --method fd --dataset ave --data-root data/ave

`prepare` stores the frames at 1 fps (frame k at second k), the audio track at 16 kHz, and each
clip's StartTime-EndTime. Protocols (`--set protocol=NAME`):

c2kd (default; FD-CMKD's reference code has no AVE loader): huofushuo/C2KD, ave/utils/AVEDataset.py
  reading what ave/utils/data/AVE/video_preprocessing.py's `extractWav_SE` / `extractImage_SE`
  write: the audio at 16 kHz cut to [16000 StartTime, 16000 EndTime), np.tile(x, 10) (and 10 times
  more if still under 160000 samples), the first 160000, clipped, log(|scipy.signal.spectrogram(
  fs=16000, nperseg=512, noverlap=353)| + 1e-7), standardised over the clip (257 x 1004), then
  np.resize(..., (257, 1024)) as the loader does: 1 x 257 x 1024. Frames: the 1 fps frames of
  seconds StartTime..EndTime (both included); the first listed one at train and at test.
  `segment=false` uses the whole clip instead of the annotated segment (recorded in the run).

RandomResizedCrop(224) + flip at train, a 224 x 224 resize at test, ImageNet normalisation. Not
reproduced: os.listdir's order (the earliest frame is taken), the random frames C2KD adds to
segments with fewer than 10, OpenCV's frame positions, moviepy/librosa's resampling.
"""

from __future__ import annotations

from pathlib import Path

from cmkd_bench.data import DecodedPairs
from cmkd_bench.data.media import VIDEO_SUFFIXES, FrameSampling
from cmkd_bench.data.prepare import Clip, ClipPlan, ClipPreparer
from cmkd_bench.datasets._av_packed import Packer
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from ._av_common import (AudioRecipe, Listed, Protocol, VisualRecipe, build_clip_dataset,
                         choose_protocol, index_files, one_row_per_clip, protocol_specs, read_text)

NUM_CLASSES = 28
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
SPLIT_ROWS = {"train": 3339, "val": 402, "test": 402}  # the official files' rows, before the split rule (see above)
WHERE = ("put the official trainSet.txt, valSet.txt and testSet.txt of the AVE_Dataset folder "
         "(github.com/YapengTian/AVE-ECCV18) in --src")
STORED_RATE = 16000

PROTOCOLS = {
    "c2kd": Protocol(
        "c2kd", "huofushuo/C2KD: ave/utils/AVEDataset.py, ave/utils/data/AVE/video_preprocessing.py (extractWav_SE, extractImage_SE)",
        AudioRecipe(rate=16000, transform="scipy-spectrogram", n_fft=512, hop=512 - 353, seconds=10.0, tiles=(10, 10),
                    standardize=True, resize=(257, 1024), segment=True),
        VisualRecipe(frames=1, train="first", test="first"),
        "os.listdir order; the random extra frames of short segments; the split rule (see the module docstring)"),
}
DEFAULT_PROTOCOL = "c2kd"


def _seconds(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"ave: {where} has StartTime/EndTime {text!r}; expected a number of seconds") from None


def _read_split(path: Path, split: str) -> list[Listed]:
    rows = []
    for number, line in enumerate(read_text("ave", path, WHERE).splitlines(), start=1):
        fields = [field.strip() for field in line.split("&")]
        if not line.strip() or fields[:2] == ["Category", "VideoID"]:
            continue
        where = f"{path.name} line {number}"
        if len(fields) < 5 or not fields[0] or not fields[1]:
            raise UserError(f"ave: {str(path)!r} line {number} is not `Category&VideoID&Quality&StartTime&EndTime` "
                            f"(got {line.strip()!r}); {WHERE}")
        start, end = _seconds(fields[3], where), _seconds(fields[4], where)
        if not 0 <= start <= end:
            raise UserError(f"ave: {where} has the segment {start:g}-{end:g} s; StartTime must not exceed EndTime")
        rows.append(Listed(fields[1], split, fields[0], where, start, end))
    return rows


def plan(src: Path) -> ClipPlan:
    listed = {split: _read_split(src / name, split) for split, name in SPLIT_FILES.items()}
    classes = list(dict.fromkeys(row.category for row in listed["test"]))
    if len(classes) != NUM_CLASSES:
        raise UserError(f"ave: {str(src / SPLIT_FILES['test'])!r} names {len(classes)} categories; AVE has {NUM_CLASSES}; {WHERE}")
    for split in ("train", "val"):
        unknown = next((row for row in listed[split] if row.category not in classes), None)
        if unknown is not None:
            raise UserError(f"ave: {unknown.where} names category {unknown.category!r}, which testSet.txt does not; {WHERE}")
    rows = [row for split_rows in listed.values() for row in split_rows]
    empty = [row for row in rows if row.start == row.end]  # trainSet.txt lists VWi2ENBuTbw with the segment 0-0
    kept, excluded, notes = one_row_per_clip([row for row in rows if row.start != row.end], SPLIT_FILES)
    excluded += [(row.clip, row.split, f"{row.where}: the annotated segment {row.start:g}-{row.end:g} s is empty, so "
                                       f"C2KD's segment extraction has no audio for it") for row in empty]
    if empty:
        notes.append(f"{len(empty)} row(s) with an empty annotated segment (StartTime = EndTime) left out, "
                     f"first: {empty[0].clip} ({empty[0].where})")
    videos = index_files(src, VIDEO_SUFFIXES)
    clips, missing = [], []
    for row in kept:
        video = videos.get(row.clip)
        if video is None:
            missing.append((row.clip, f"no video {row.clip}.mp4 under {src}"))
            continue
        clips.append(Clip(row.clip, classes.index(row.category), row.split, video, video, row.start, row.end))
    return ClipPlan(classes, clips, missing, excluded, notes)


PREPARER = ClipPreparer("ave", plan, STORED_RATE, FrameSampling(mode="fps", fps=1.0), pack=Packer("ave", PROTOCOLS))


@DATASETS.register("ave", tasks=("classification",), prepare=PREPARER,
                   specs_without_data=protocol_specs("ave", PROTOCOLS, num_classes=NUM_CLASSES, teacher="audio",
                                                     student="visual", split_rows=SPLIT_ROWS),
                   description="AVE events (28 classes): frame + spectrogram of the annotated segment; official split, "
                               "one row per VideoID; protocol c2kd",
                   reference="Tian et al., Audio-Visual Event Localization in Unconstrained Videos, ECCV 2018; "
                             "protocol from the code of C2KD (huofushuo/C2KD)")
def ave(data_root: Path | None, protocol: str = DEFAULT_PROTOCOL, image_size: int = 224, frames: int | None = None,
        augment: bool = True, standardize: bool | None = None, segment: bool | None = None,
        num_workers: int = 4, store: str = "auto") -> DecodedPairs:
    """`frames`, `standardize` and `segment` left unset take the protocol's values."""
    chosen = choose_protocol("ave", PROTOCOLS, protocol)
    return build_clip_dataset("ave", data_root, num_classes=NUM_CLASSES, teacher="audio", student="visual",
                              protocol=chosen, image_size=image_size, frames=frames, augment=augment,
                              standardize=standardize, segment=segment, val_fraction=0.1, split_seed=0,
                              num_workers=num_workers, store=store)
