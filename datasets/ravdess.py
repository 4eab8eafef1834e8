"""ravdess: RAVDESS emotional speech (Livingstone & Russo, PLoS ONE 2018), 8 emotions, 24 actors.

The release (zenodo.org/record/1188976, CC BY-NC-SA 4.0) names every file
`MM-VV-EE-II-SS-RR-AA.ext`: modality (01 audio-video, 02 video-only, 03 audio-only), vocal
channel (01 speech, 02 song), emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry,
06 fearful, 07 disgust, 08 surprised), intensity, statement, repetition, actor (odd = male).
Unzip the Video_Speech_Actor_*.zip files (and, optionally, Audio_Speech_Actors_01-24.zip) anywhere
under --src. Speech only (1,440 clips); label = emotion - 1. The video comes from the 01 (or 02)
.mp4, the audio from the 03 .wav when present, else from the 01 .mp4's track.

Split: actors 1-16 train (960 clips), 17-20 val (240), 21-24 test (240): speaker-disjoint and
gender-balanced, derived from the file names, so nothing needs to be downloaded.

    cmkd-bench prepare ravdess --src RAVDESS/ --dst data/ravdess
    cmkd-bench run --method fd --dataset ravdess --data-root data/ravdess

`prepare` stores the middle frame of the clip (the centred square of side = frame height: RAVDESS
films one frontal, centred actor, and no face detector is downloaded) and the audio at 16 kHz.
One protocol, `suite` (the suite's own; it reproduces no paper): the frame resized to 224 px,
ImageNet normalisation, RandomResizedCrop + flip at train; the audio looped to 4 s, log-mel
spectrogram, 128 HTK mel bands, 25 ms window, 10 ms hop (centred): 1 x 128 x 401, standardised per
clip (the common Kaldi-style filterbank setting).

Neither paper that uses RAVDESS for CMKD can be reproduced from its public code, so neither is a
protocol here. MFH (Xue et al., ICLR 2023; zihuixue/MFH, ravdess/utils/helper.py and
dataloader.py) reads pre-extracted features and its split files `spa_dl.csv` / `spa_val.csv` /
`spa_test.csv` from a Google Drive folder, audio normalised with mean -10.59, std 85.66; the
extraction code is not published. MST-Distill (Li et al., ACM MM 2025; Gray-OREO/MST-Distill,
data_preprocess/preprocess_RAVDESS_*.py, utils.py) crops 15 faces per clip with MTCNN
(facenet_pytorch weights), takes 15 MFCCs of 3.6 s of audio at 22.05 kHz, and splits the clips at
random 60/20/20 (not by actor) from a permutation file, metadata/RAVDESS_indices.csv, also on
Google Drive. Numbers of either paper are therefore not comparable with runs of this protocol.
"""

from __future__ import annotations

import re
from pathlib import Path

from cmkd_bench.data import DecodedPairs
from cmkd_bench.data.media import FrameSampling
from cmkd_bench.data.prepare import Clip, ClipPlan, ClipPreparer
from cmkd_bench.datasets._av_packed import Packer
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from ._av_common import AudioRecipe, Protocol, VisualRecipe, build_clip_dataset, choose_protocol, protocol_specs

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
SPLIT_ACTORS = {"train": range(1, 17), "val": range(17, 21), "test": range(21, 25)}
CLIPS_PER_ACTOR = 60  # speech: 7 emotions x 2 intensities + neutral at one, x 2 statements x 2 repetitions
SPLIT_ROWS = {split: CLIPS_PER_ACTOR * len(actors) for split, actors in SPLIT_ACTORS.items()}  # 960, 240, 240
NAME = re.compile(r"^(0[123])-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)$")
STORED_RATE = 16000
PROTOCOLS = {
    "suite": Protocol(
        "suite", "the suite's own (no paper's code reproduces RAVDESS from the raw release; see the module docstring)",
        AudioRecipe(rate=16000, transform="mel", n_fft=512, hop=160, seconds=4.0, standardize=True, n_mels=128,
                    mel_window=400),
        VisualRecipe(frames=1, train="first", test="first")),
}
DEFAULT_PROTOCOL = "suite"


def _split_of(actor: int) -> str | None:
    return next((split for split, actors in SPLIT_ACTORS.items() if actor in actors), None)


def _scan(src: Path) -> dict[str, dict[str, Path]]:
    """Speech files by clip identity (every field but the modality), then by modality code."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(src.rglob("*")):
        match = NAME.match(path.stem)
        if not match or path.suffix.lower() not in (".mp4", ".wav") or match.group(2) != "01":
            continue
        key = "-".join(match.groups()[1:])
        found.setdefault(key, {}).setdefault(match.group(1), path)
    return found


def plan(src: Path) -> ClipPlan:
    found = _scan(src)
    if not found:
        raise UserError(f"ravdess: no RAVDESS speech files (MM-01-EE-II-SS-RR-AA.mp4/.wav) under {str(src)!r}; "
                        f"unzip Video_Speech_Actor_*.zip from zenodo.org/record/1188976 there")
    clips, missing = [], []
    for key, files in sorted(found.items()):
        fields = key.split("-")
        split = _split_of(int(fields[-1]))
        if split is None:
            raise UserError(f"ravdess: file {files[min(files)]} names actor {fields[-1]}; RAVDESS actors are 01-24")
        video = files.get("01") or files.get("02")
        audio = files.get("03") or files.get("01")
        if video is None or audio is None:
            missing.append((key, f"only {', '.join(p.name for p in files.values())}: needs a video and an audio source"))
            continue
        clips.append(Clip(key, int(fields[1]) - 1, split, video, audio))
    return ClipPlan(list(EMOTIONS), clips, missing)


PREPARER = ClipPreparer("ravdess", plan, STORED_RATE, FrameSampling(mode="middle", square=True), pack=Packer("ravdess", PROTOCOLS))


@DATASETS.register("ravdess", tasks=("classification",), prepare=PREPARER,
                   specs_without_data=protocol_specs("ravdess", PROTOCOLS, num_classes=len(EMOTIONS), teacher="audio",
                                                     student="visual", split_rows=SPLIT_ROWS),
                   description="RAVDESS speech emotions (8 classes): middle face frame + 4 s log-mel; actors 1-16/17-20/21-24; "
                               "protocol suite (no paper's)",
                   reference="Livingstone & Russo, RAVDESS, PLoS ONE 2018; the suite's split and protocol (MFH and "
                             "MST-Distill cannot be reproduced from their public code)")
def ravdess(data_root: Path | None, protocol: str = DEFAULT_PROTOCOL, image_size: int = 224, augment: bool = True,
            standardize: bool | None = None, num_workers: int = 4, store: str = "auto") -> DecodedPairs:
    chosen = choose_protocol("ravdess", PROTOCOLS, protocol)
    return build_clip_dataset("ravdess", data_root, num_classes=len(EMOTIONS), teacher="audio", student="visual",
                              protocol=chosen, image_size=image_size, frames=1, augment=augment,
                              standardize=standardize, val_fraction=0.1, split_seed=0, num_workers=num_workers, store=store)
