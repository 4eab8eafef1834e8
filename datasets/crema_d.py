"""crema-d: CREMA-D emotion recognition (Cao et al., IEEE TAC 2014), 6 classes, audio and a face frame.

The raw release (github.com/CheyneyComputerScience/CREMA-D, Open Database License) has
`AudioWAV/NAME.wav` (16 kHz, 16-bit mono) and `VideoFlash/NAME.flv`; its GitHub copy stores them in
Git LFS, so clone it with `git lfs clone` (or run `git lfs pull` after cloning): a plain clone holds
pointer files, which `prepare` recognises and names in one line. The split is OGM-GE's (Peng et
al., CVPR 2022), which C2KD and FD-CMKD read unchanged: `data/CREMAD/train.csv` (6,698 rows) and
`test.csv` (744 rows) of github.com/GeWu-Lab/OGM-GE_CVPR2022, rows `NAME,EMOTION` (e.g.
`1088_IOM_NEU_XX,NEU`), CRLF line ends, no header; read with utf-8-sig as the reference loaders do,
so a byte-order mark changes nothing. Copy the two files next to AudioWAV/ (the suite does not ship
them). Class ids follow the references' class_dict: NEU HAP SAD FEA DIS ANG. The references
validate on the test split; the suite never selects on test, so a seeded, stratified
`val_fraction` of train is held out for model selection.

    cmkd-bench prepare crema-d --src CREMA-D/ --dst data/crema-d
    cmkd-bench run --method fd --dataset crema-d --data-root data/crema-d [--set protocol=c2kd]

`prepare` stores the frames at 1 fps and the wav as it is (16 kHz); the protocol is applied when a
sample is read. Protocols (`--set protocol=NAME`), each read from the reference code:

fd-cmkd (default): zxn0710/re-FD-CMKD-main, dataset/CremadDataset.py reading the `Audio-299`
  spectrograms written by `extractWav` in data/CREMAD/video_preprocessing.py: the wav at 16 kHz,
  np.tile(x, 3)[:48000], clipped to [-1, 1], log(|scipy.signal.spectrogram(fs=16000, nperseg=512,
  noverlap=353)| + 1e-7), not standardised: 1 x 257 x 299. Frames: the sorted frame list, a random
  one at train, index n // 2 at test. Note: the same repository's data/CREMAD/audio_preprocessing.py
  (which its README says to run) writes into the same `Audio-299` folder spectrograms of 257 x 1004
  (librosa.load's default 22.05 kHz, 160000 samples, standardised); the folder's name and the
  299-frame `extractWav` are what CremadDataset.py's path points at, so that is the one reproduced.
c2kd: huofushuo/C2KD, cramed/utils/CramedDataset.py: librosa.load(sr=22050), np.tile(x, 3)[:66150],
  clipped, log(|librosa.stft(n_fft=512, hop_length=353)| + 1e-7), not standardised: 1 x 257 x 188;
  librosa 0.10.1 (pinned in C2KD's requirement.txt) pads the centred frames with zeros. Frames: the
  first listed frame (os.listdir(...)[0]) at train and at test.
ogm-ge: GeWu-Lab/OGM-GE_CVPR2022, dataset/CramedDataset.py: the same code as C2KD's (22.05 kHz,
  librosa.stft 512 / 353, 257 x 188, not standardised, the first listed frame). OGM-GE pins no
  librosa; its README's environment (Python 3.7.6, PyTorch 1.8.1) predates librosa 0.9.0, which
  changed librosa.stft's default centre padding from "reflect" to "constant", so this protocol pads
  by reflection (the only difference from c2kd: the first and last frames).

Every protocol trains on RandomResizedCrop(224) + horizontal flip and tests on a 224 x 224 resize,
ImageNet normalisation (`augment=false` turns the crop and flip off). Not reproduced: the
references' frame extraction with OpenCV (frame k * int(fps) rather than the frame nearest second
k), FD-CMKD's random extra frames for clips under 3 s, and librosa's soxr resampler (scipy's
polyphase resampler makes the 22.05 kHz samples). `frames=N` stacks N frames on the channels.
"""

from __future__ import annotations

from pathlib import Path

from cmkd_bench.data import DecodedPairs
from cmkd_bench.data.media import FrameSampling
from cmkd_bench.data.prepare import Clip, ClipPlan, ClipPreparer
from cmkd_bench.datasets._av_packed import Packer
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from ._av_common import (AudioRecipe, Listed, Protocol, VisualRecipe, build_clip_dataset,
                         choose_protocol, one_row_per_clip, protocol_specs, read_csv_rows)

CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # the references' class_dict order
SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}
SPLIT_ROWS = {"train": 6698, "test": 744}  # the rows of OGM-GE's train.csv and test.csv (see above)
WHERE = "copy train.csv and test.csv from OGM-GE (github.com/GeWu-Lab/OGM-GE_CVPR2022, data/CREMAD/) into --src"
STORED_RATE = 16000  # CREMA-D's wavs are 16 kHz: stored sample for sample

_LIBROSA_22K = dict(rate=22050, transform="librosa-stft", n_fft=512, hop=353, seconds=3.0, tiles=(3,))
PROTOCOLS = {
    "fd-cmkd": Protocol(
        "fd-cmkd", "zxn0710/re-FD-CMKD-main: dataset/CremadDataset.py, data/CREMAD/video_preprocessing.py (extractWav)",
        AudioRecipe(rate=16000, transform="scipy-spectrogram", n_fft=512, hop=512 - 353, seconds=3.0, tiles=(3,)),
        VisualRecipe(frames=1, train="segments", test="segments"),
        "OpenCV frame extraction and the random extra frames of clips under 3 s"),
    "c2kd": Protocol(
        "c2kd", "huofushuo/C2KD: cramed/utils/CramedDataset.py; librosa==0.10.1 (vggsound/requirement.txt)",
        AudioRecipe(**_LIBROSA_22K, pad_mode="constant"), VisualRecipe(frames=1, train="first", test="first"),
        "os.listdir order (the earliest frame is taken); soxr resampling"),
    "ogm-ge": Protocol(
        "ogm-ge", "GeWu-Lab/OGM-GE_CVPR2022: dataset/CramedDataset.py",
        AudioRecipe(**_LIBROSA_22K, pad_mode="reflect"), VisualRecipe(frames=1, train="first", test="first"),
        "os.listdir order (the earliest frame is taken); resampy/soxr resampling; the librosa version is inferred"),
}
DEFAULT_PROTOCOL = "fd-cmkd"


def _read_split(path: Path, split: str) -> list[Listed]:
    rows = []
    for number, row in read_csv_rows("crema-d", path, WHERE):
        if number == 1 and row[-1] not in CLASSES and len(rows) == 0 and not row[0][:4].isdigit():  # a header line
            continue
        if len(row) < 2 or row[1] not in CLASSES or not row[0]:
            raise UserError(f"crema-d: {str(path)!r} line {number} is not `NAME,EMOTION` with EMOTION in {' '.join(CLASSES)} "
                            f"(got {','.join(row)!r}); {WHERE}")
        rows.append(Listed(row[0], split, row[1], f"{path.name} line {number}"))
    return rows


def plan(src: Path) -> ClipPlan:
    listed = [row for split, name in SPLIT_FILES.items() for row in _read_split(src / name, split)]
    folders = {kind: src / kind for kind in ("AudioWAV", "VideoFlash")}
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise UserError(f"crema-d: folder {str(folder)!r} is missing; --src must be the CREMA-D release with "
                            f"AudioWAV/ and VideoFlash/ (and OGM-GE's train.csv, test.csv)")
    kept, excluded, notes = one_row_per_clip(listed, SPLIT_FILES)
    clips, missing = [], []
    for row in kept:
        audio, video = folders["AudioWAV"] / f"{row.clip}.wav", folders["VideoFlash"] / f"{row.clip}.flv"
        absent = [p for p in (video, audio) if not p.is_file()]
        if absent:
            missing.append((row.clip, f"{absent[0]}: file not found"))
        else:
            clips.append(Clip(row.clip, CLASSES.index(row.category), row.split, video, audio))
    return ClipPlan(list(CLASSES), clips, missing, excluded, notes)


PREPARER = ClipPreparer("crema-d", plan, STORED_RATE, FrameSampling(mode="fps", fps=1.0), pack=Packer("crema-d", PROTOCOLS))


@DATASETS.register("crema-d", aliases=("cremad",), tasks=("classification",), prepare=PREPARER,
                   specs_without_data=protocol_specs("crema-d", PROTOCOLS, num_classes=len(CLASSES), teacher="audio",
                                                     student="visual", split_rows=SPLIT_ROWS),
                   description="CREMA-D emotions (6 classes): face frame + spectrogram; OGM-GE split; "
                               "protocol fd-cmkd (default), c2kd or ogm-ge",
                   reference="Cao et al., CREMA-D, IEEE TAC 2014; split of OGM-GE (CVPR 2022); protocols from the "
                             "code of FD-CMKD (zxn0710/re-FD-CMKD-main), C2KD (huofushuo/C2KD), OGM-GE")
def crema_d(data_root: Path | None, protocol: str = DEFAULT_PROTOCOL, image_size: int = 224, frames: int | None = None,
            augment: bool = True, standardize: bool | None = None, val_fraction: float = 0.1, split_seed: int = 0,
            num_workers: int = 4, store: str = "auto") -> DecodedPairs:
    """`frames` and `standardize` left unset take the protocol's values (1 frame, not standardised)."""
    chosen = choose_protocol("crema-d", PROTOCOLS, protocol)
    return build_clip_dataset("crema-d", data_root, num_classes=len(CLASSES), teacher="audio", student="visual",
                              protocol=chosen, image_size=image_size, frames=frames, augment=augment,
                              standardize=standardize, val_fraction=val_fraction, split_seed=split_seed,
                              num_workers=num_workers, store=store)
