"""vggsound-50: the 50-class subset of VGGSound (Chen et al., ICASSP 2020) used by C2KD (Huo et al., CVPR 2024).

The subset's lists are C2KD's `vggsound/datasplit.zip` (github.com/huofushuo/C2KD), which holds
`train.csv` / `test.csv` (all of VGGSound) and `train_tiny.csv` (25,835 rows) / `test_tiny.csv`
(2,500 rows): rows `YouTubeID,start_seconds,label,train|test` (e.g. `--0PQM4-hqg,30,waterfall
burbling,train`), CRLF line ends, no header, labels with commas quoted (`"subway, metro,
underground"`). Put train_tiny.csv and test_tiny.csv in --src; they are read as they are (utf-8-sig,
so a byte-order mark changes nothing). Without them, VGGSound's own list `vggsound.csv`
(www.robots.ox.ac.uk/~vgg/data/vggsound/, same row format) is read instead: the subset is exactly
its rows whose label is one of C2KD's 50 (checked: train_tiny.csv and test_tiny.csv are the rows of
C2KD's train.csv and test.csv with those labels, in the same order). Class ids: the order in which
labels first appear in train_tiny.csv, as C2KD's loader numbers them (vggsound/utils/
VGGSoundDataset.py; `C2KD_CLASSES` below, the same order when read from vggsound.csv's train rows).

The clips: the 10 s videos the user downloaded, named `YouTubeID_START.mp4` with START zero-padded
to 6 digits as C2KD's loader names them (`item[1].zfill(6)`; also accepted: unpadded START,
`YouTubeID_START_END`, or just `YouTubeID`), anywhere under --src, the audio track inside (a
same-named .wav/.flac beside it is used instead when present). Clips missing from the copy are
counted in one line of prepare's summary and listed in ROOT/failed.csv; comparisons with the
paper hold only for a complete copy. C2KD keeps only clips with more than 3 frames
(`len(os.listdir(video_dir)) > 3`); `prepare` leaves the others out the same way (listed too).
C2KD validates on the training set; the suite holds out a seeded, stratified `val_fraction` of
train instead.

    cmkd-bench prepare vggsound-50 --src VGGSound/ --dst data/vggsound-50
    cmkd-bench run --method fd --dataset vggsound-50 --data-root data/vggsound-50

`prepare` stores the frames at 1 fps and the audio track at 16 kHz. Protocol (`--set protocol=`):

c2kd (default; FD-CMKD's reference code has no VGGSound loader): huofushuo/C2KD,
  vggsound/utils/VGGSoundDataset.py: librosa.load(sr=16000, mono=True); np.tile(x, 2) until at
  least 10 s; a 5 s window from a random start in [0, 80000] (random.randint, both ends included),
  drawn at train and at test too (the suite draws the test window once per clip from a fixed seed,
  so every evaluation sees the same input); clipped; log(|librosa.stft(n_fft=256, hop_length=128)|
  + 1e-7) with librosa 0.10.1's zero centre padding; not standardised: 1 x 129 x 626. Frames: the
  first 3 listed (`use_video_frames` = 3 in vggsound/main_overlap_tag.py) at train and at test,
  stacked on the channels (9 x 224 x 224; C2KD's ResNet runs per frame and averages,
  vggsound/utils/model_res.py, which the suite's backbones do not do; `frames=1` takes one).

RandomResizedCrop(224) + flip at train (one crop for the clip's frames), a 224 x 224 resize at
test, ImageNet normalisation. Not reproduced: os.listdir's order (the earliest frames are taken).
"""

from __future__ import annotations

from pathlib import Path

from cmkd_bench.data import DecodedPairs
from cmkd_bench.data.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES, FrameSampling
from cmkd_bench.data.prepare import Clip, ClipPlan, ClipPreparer
from cmkd_bench.datasets._av_packed import Packer
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from ._av_common import (AudioRecipe, Listed, Protocol, VisualRecipe, build_clip_dataset,
                         choose_protocol, index_files, one_row_per_clip, protocol_specs, read_csv_rows)

NUM_CLASSES = 50
TINY_FILES = {"train": "train_tiny.csv", "test": "test_tiny.csv"}
SPLIT_ROWS = {"train": 25835, "test": 2500}  # the rows of C2KD's train_tiny.csv and test_tiny.csv (see above)
LIST_FILE = "vggsound.csv"
WHERE = (f"put C2KD's train_tiny.csv and test_tiny.csv (vggsound/datasplit.zip of github.com/huofushuo/C2KD) in --src, "
         f"or VGGSound's {LIST_FILE} (www.robots.ox.ac.uk/~vgg/data/vggsound/)")
STORED_RATE = 16000
MIN_FRAMES = 4  # C2KD: len(os.listdir(video_dir)) > 3
# The 50 labels of C2KD's train_tiny.csv, in the order they first appear there (its class ids).
C2KD_CLASSES = (
    "waterfall burbling", "playing tennis", "alarm clock ringing", "wind noise", "playing bongo", "playing congas",
    "subway, metro, underground", "playing acoustic guitar", "dog growling", "horse neighing", "pigeon, dove cooing",
    "playing trumpet", "footsteps on snow", "playing accordion", "turkey gobbling", "playing clarinet", "dog whimpering",
    "car engine idling", "people farting", "people marching", "helicopter", "cell phone buzzing", "cat meowing",
    "playing double bass", "people hiccup", "playing snare drum", "baby laughter", "people coughing",
    "plastic bottle crushing", "goose honking", "dog barking", "smoke detector beeping", "people sniggering",
    "people eating crisps", "thunder", "ferret dooking", "firing muskets", "cow lowing", "eating with cutlery",
    "playing timbales", "people slapping", "pumping water", "playing tuning fork", "tornado roaring", "dog howling",
    "strike lighter", "blowtorch igniting", "sea lion barking", "cutting hair with electric trimmers", "otter growling",
)

PROTOCOLS = {
    "c2kd": Protocol(
        "c2kd", "huofushuo/C2KD: vggsound/utils/VGGSoundDataset.py, vggsound/main_overlap_tag.py; librosa==0.10.1",
        AudioRecipe(rate=16000, transform="librosa-stft", n_fft=256, hop=128, seconds=5.0, double_until=10.0,
                    window="random", pad_mode="constant"),
        VisualRecipe(frames=3, train="first", test="first"),
        "os.listdir order; the test window is drawn once per clip (fixed seed), not anew at every evaluation"),
}
DEFAULT_PROTOCOL = "c2kd"


def _rows(path: Path, splits: tuple[str, ...]) -> list[tuple[str, int, str, str, str]]:
    """(YouTube id, start second, label, split, where) per row; a header line is skipped."""
    rows = []
    for number, row in read_csv_rows("vggsound-50", path, WHERE):
        if len(row) < 4 or not row[1].lstrip("-").isdigit():
            if number == 1:
                continue
            raise UserError(f"vggsound-50: {str(path)!r} line {number} is not `YouTubeID,start_seconds,label,split` "
                            f"(got {','.join(row)!r})")
        if row[3] not in splits:
            raise UserError(f"vggsound-50: {str(path)!r} line {number} has the split {row[3]!r}; expected {' or '.join(splits)}")
        rows.append((row[0], int(row[1]), row[2], row[3], f"{path.name} line {number}"))
    return rows


def _listed(src: Path) -> tuple[list[Listed], list[str]]:
    """The subset's rows and its class names in class-id order."""
    present = {split: (src / name).is_file() for split, name in TINY_FILES.items()}
    if any(present.values()):
        absent = [TINY_FILES[split] for split, there in present.items() if not there]
        if absent:
            raise UserError(f"vggsound-50: {str(src / absent[0])!r} is missing (its partner is there); {WHERE}")
        rows = [row for split, name in TINY_FILES.items() for row in _rows(src / name, (split,))]
        classes = list(dict.fromkeys(row[2] for row in rows if row[3] == "train"))
        test_classes = {row[2] for row in rows if row[3] == "test"}
        if len(classes) != NUM_CLASSES or test_classes != set(classes):
            raise UserError(f"vggsound-50: {TINY_FILES['train']} names {len(classes)} labels and {TINY_FILES['test']} "
                            f"{len(test_classes)} ({len(test_classes - set(classes))} not in train); the subset has "
                            f"{NUM_CLASSES} in both; {WHERE}")
    elif (src / LIST_FILE).is_file():
        rows = [row for row in _rows(src / LIST_FILE, ("train", "test")) if row[2] in C2KD_CLASSES]
        classes = list(dict.fromkeys(row[2] for row in rows if row[3] == "train"))
        absent = [label for label in C2KD_CLASSES if label not in classes]
        if absent:
            raise UserError(f"vggsound-50: {str(src / LIST_FILE)!r} has no train row labelled {absent[0]!r}, one of "
                            f"C2KD's 50 classes; is it VGGSound's list? {WHERE}")
    else:
        raise UserError(f"vggsound-50: {str(src)!r} has neither {TINY_FILES['train']} + {TINY_FILES['test']} nor "
                        f"{LIST_FILE}; {WHERE}")
    return [Listed(f"{yid}_{start:06d}", split, label, where) for yid, start, label, split, where in rows], classes


def _find(files: dict[str, Path], name: str) -> Path | None:
    video_id, start = name.rsplit("_", 1)
    for stem in (name, f"{video_id}_{int(start)}", f"{name}_{int(start) + 10:06d}", video_id):
        if stem in files:
            return files[stem]
    return None


def plan(src: Path) -> ClipPlan:
    listed, classes = _listed(src)
    kept, excluded, notes = one_row_per_clip(listed, {"train": "the train rows", "test": "the test rows"})
    videos, audios = index_files(src, VIDEO_SUFFIXES), index_files(src, AUDIO_SUFFIXES)
    clips, missing = [], []
    for row in kept:
        video = _find(videos, row.clip)
        if video is None:
            missing.append((row.clip, f"no video {row.clip}.mp4 under {src}"))
            continue
        clips.append(Clip(row.clip, classes.index(row.category), row.split, video, _find(audios, row.clip) or video))
    return ClipPlan(classes, clips, missing, excluded, notes)


PREPARER = ClipPreparer("vggsound-50", plan, STORED_RATE, FrameSampling(mode="fps", fps=1.0), min_frames=MIN_FRAMES,
                        min_frames_reason="C2KD keeps clips with more than 3 (vggsound/utils/VGGSoundDataset.py)",
                        pack=Packer("vggsound-50", PROTOCOLS))


@DATASETS.register("vggsound-50", aliases=("vggsound50",), tasks=("classification",), prepare=PREPARER,
                   specs_without_data=protocol_specs("vggsound-50", PROTOCOLS, num_classes=NUM_CLASSES, teacher="audio",
                                                     student="visual", split_rows=SPLIT_ROWS),
                   description="VGGSound 50-class subset (C2KD's train_tiny/test_tiny): 3 frames + 5 s log STFT "
                               "(129 x 626); protocol c2kd",
                   reference="Chen et al., VGGSound, ICASSP 2020; 50-class subset and protocol from the code of C2KD "
                             "(huofushuo/C2KD)")
def vggsound_50(data_root: Path | None, protocol: str = DEFAULT_PROTOCOL, image_size: int = 224, frames: int | None = None,
                augment: bool = True, standardize: bool | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                num_workers: int = 4, store: str = "auto") -> DecodedPairs:
    """`frames` and `standardize` left unset take the protocol's values (3 frames, not standardised)."""
    chosen = choose_protocol("vggsound-50", PROTOCOLS, protocol)
    return build_clip_dataset("vggsound-50", data_root, num_classes=NUM_CLASSES, teacher="audio", student="visual",
                              protocol=chosen, image_size=image_size, frames=frames, augment=augment,
                              standardize=standardize, val_fraction=val_fraction, split_seed=split_seed,
                              num_workers=num_workers, store=store)
