"""crema-d: CREMA-D emotion recognition (Cao et al., IEEE TAC 2014), 6 classes, audio and one face frame.

The raw release (github.com/CheyneyComputerScience/CREMA-D, Open Database License) has
`AudioWAV/NAME.wav` (16 kHz) and `VideoFlash/NAME.flv`. The split is the one of OGM-GE (Peng et
al., CVPR 2022), also used by C2KD and FD-CMKD: 6,698 train / 744 test clips, listed in OGM-GE's
`data/CREMAD/train.csv` and `test.csv` (github.com/GeWu-Lab/OGM-GE_CVPR2022; rows `NAME,EMOTION`,
e.g. `1001_DFA_ANG_XX,ANG`). Copy those two files into the release folder (next to AudioWAV/);
the suite does not ship them. Class ids follow OGM-GE's order: NEU HAP SAD FEA DIS ANG.
CREMA-D has no validation split: a seeded, stratified `val_fraction` of train is held out.

    cmkd-bench prepare crema-d --src CREMA-D/ --dst data/crema-d
    cmkd-bench run --method fd --dataset crema-d --data-root data/crema-d

Preprocessing (OGM-GE / C2KD reference code): frames extracted at 1 fps; one frame per clip,
random at train (with RandomResizedCrop and flip), the middle one at test, 224 px, ImageNet
normalisation. `--set frames=3` stacks 3 frames on the channels (OGM-GE's multi-frame setting).
Audio: the wav looped to 3 s at 16 kHz, log spectrogram with scipy.signal.spectrogram
(nperseg 512, noverlap 353): 1 x 257 x 299, standardised per clip.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cmkd_bench.errors import UserError
from cmkd_bench.media import AudioFeatures, FrameSampling
from cmkd_bench.prepare import Clip, ClipPlan, ClipPreparer
from cmkd_bench.registry import DATASETS

from ._av_common import ClipOptions, DecodedPairs, build_clip_dataset, require_file

CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # OGM-GE's class_dict order
SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}
WHERE = "copy train.csv and test.csv from OGM-GE (github.com/GeWu-Lab/OGM-GE_CVPR2022, data/CREMAD/) into --src"
AUDIO = AudioFeatures("spectrogram", rate=16000, seconds=3.0, params=(("noverlap", 353), ("nperseg", 512)))


def _read_split(path: Path) -> list[tuple[str, int]]:
    rows = []
    with open(path, newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or (number == 1 and row[-1].strip() not in CLASSES):  # a header line
                continue
            if len(row) < 2 or row[1].strip() not in CLASSES:
                raise UserError(f"crema-d: {str(path)!r} line {number} is not `NAME,EMOTION` with EMOTION in {' '.join(CLASSES)}")
            rows.append((row[0].strip(), CLASSES.index(row[1].strip())))
    return rows


def plan(src: Path) -> ClipPlan:
    folders = {kind: src / kind for kind in ("AudioWAV", "VideoFlash")}
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise UserError(f"crema-d: folder {str(folder)!r} is missing; --src must be the CREMA-D release with AudioWAV/ and VideoFlash/")
    clips, missing = [], []
    for split, file_name in SPLIT_FILES.items():
        for name, label in _read_split(require_file("crema-d", src / file_name, WHERE)):
            audio, video = folders["AudioWAV"] / f"{name}.wav", folders["VideoFlash"] / f"{name}.flv"
            absent = [p for p in (audio, video) if not p.is_file()]
            if absent:
                missing.append((name, f"{absent[0]}: file not found"))
            else:
                clips.append(Clip(name, label, split, video, audio))
    return ClipPlan(list(CLASSES), clips, missing)


PREPARER = ClipPreparer("crema-d", plan, AUDIO, FrameSampling(mode="fps", fps=1.0))


@DATASETS.register("crema-d", aliases=("cremad",), tasks=("classification",), prepare=PREPARER,
                   description="CREMA-D emotions (6 classes): 1 fps face frame + 3 s log spectrogram; OGM-GE split",
                   reference="Cao et al., CREMA-D, IEEE TAC 2014; split and preprocessing of OGM-GE (CVPR 2022) / C2KD (CVPR 2024)")
def crema_d(data_root: Path | None, image_size: int = 224, frames: int = 1, seconds: float = 3.0, augment: bool = True,
            standardize: bool = True, val_fraction: float = 0.1, split_seed: int = 0, num_workers: int = 4) -> DecodedPairs:
    options = ClipOptions(image_size=image_size, frames=frames, augment=augment, standardize=standardize)
    recorded = {"image_size": image_size, "frames": frames, "seconds": seconds, "augment": augment,
                "standardize": standardize, "val_fraction": val_fraction, "split_seed": split_seed}
    return build_clip_dataset("crema-d", data_root, num_classes=len(CLASSES), teacher="audio", student="visual",
                              options=options, seconds=seconds, val_fraction=val_fraction, split_seed=split_seed,
                              num_workers=num_workers, recorded=recorded)
