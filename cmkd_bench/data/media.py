"""Decoding raw media: audio tracks, video frames, spectrograms, images.

Video and audio are decoded with PyAV (its wheels bundle FFmpeg's libraries, so no system
`ffmpeg` binary is needed and every container the datasets ship in — .flv, .mp4, .wav — reads the
same way). Audio is decoded at the file's own rate, averaged over channels (librosa.to_mono's
rule) and resampled with scipy.signal.resample_poly where another rate is asked for. Spectrograms
use scipy.signal, or `librosa_stft_magnitude`, a numpy reimplementation of librosa.stft's framing
(librosa is not a dependency) for the reference code that calls librosa.

Nothing here imports torch: these functions run in `prepare`'s worker processes and in the
loaders' DataLoader workers. A file that cannot be decoded raises `MediaError` naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac")
VIDEO_SUFFIXES = (".mp4", ".flv", ".mkv", ".webm", ".avi", ".mov")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LOG_FLOOR = 1e-7  # the reference code's log(x + 1e-7)


LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
LFS_POINTER_MAX_BYTES = 1024  # a pointer is three short lines (version, oid, size)


class MediaError(Exception):
    """A file that is missing or cannot be decoded; the message names the file."""


def is_lfs_pointer(path: Path) -> bool:
    """Whether `path` is a Git LFS pointer file (what a clone without `git lfs pull` holds) instead of its content."""
    try:
        if path.stat().st_size > LFS_POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def _av():
    try:
        import av
    except ImportError:
        raise MediaError("PyAV is not installed; run `pip install av` (its wheels include FFmpeg)") from None
    return av


def _open(path: Path):
    av = _av()
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    if is_lfs_pointer(path):
        raise MediaError(f"{path}: a Git LFS pointer file, not the media; run `git lfs pull` in the clone it comes from")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: cannot open ({exc})") from None


# -- audio ---------------------------------------------------------------------------------------
def decode_audio(path: Path, rate: int) -> np.ndarray:
    """The first audio track of any container as mono float32 at `rate` Hz.

    Decoded at the file's own rate, averaged over its channels (as librosa.to_mono), then, where
    the rates differ, resampled with scipy.signal.resample_poly (Kaiser window, beta 12).
    librosa.load resamples with soxr instead: on band-limited noise, the log spectrograms of the
    two agree to a median |difference| under 1e-3 (measured against librosa 0.10.1 for 16 -> 22.05,
    44.1 -> 16 and 48 -> 16 kHz); bins above the source's Nyquist frequency, where both hold
    only filter leakage, differ more. A file already at `rate` (CREMA-D's 16 kHz wavs) is
    returned sample for sample.
    """
    av = _av()
    container = _open(path)
    native = None
    try:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        resampler = av.AudioResampler(format="fltp")  # planar float, the file's own layout and rate
        chunks = []
        for frame in container.decode(audio=0):
            native = native or frame.sample_rate
            chunks.extend(f.to_ndarray().mean(axis=0) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().mean(axis=0) for f in resampler.resample(None))
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError(f"{path}: audio does not decode ({exc})") from None
    finally:
        container.close()
    wave = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        raise MediaError(f"{path}: audio track is empty")
    return resample(wave, int(native), rate)


def resample(wave: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """`wave` from `source_rate` to `rate` Hz (scipy.signal.resample_poly), float32; unchanged when equal."""
    if source_rate == rate:
        return wave.astype(np.float32, copy=False)
    from scipy import signal

    divisor = math.gcd(int(source_rate), int(rate))
    return signal.resample_poly(wave, rate // divisor, source_rate // divisor, window=("kaiser", 12.0)).astype(np.float32)


def tile_to(wave: np.ndarray, samples: int) -> np.ndarray:
    """Repeat a clip until it is `samples` long, then cut, and clip to [-1, 1].

    paired-manifest's looping (short clips are looped rather than zero-padded); the real datasets'
    protocols loop as their reference code does (`AudioRecipe` in datasets/_av_common.py).
    """
    repeats = math.ceil(samples / len(wave))
    return np.clip(np.tile(wave, repeats)[:samples], -1.0, 1.0)


def log_spectrogram(wave: np.ndarray, rate: int, nperseg: int = 512, noverlap: int = 353) -> np.ndarray:
    """log(power spectral density + 1e-7) with scipy.signal.spectrogram: (nperseg/2 + 1) x frames."""
    from scipy import signal

    _, _, power = signal.spectrogram(wave, rate, nperseg=nperseg, noverlap=noverlap)
    return np.log(power + LOG_FLOOR).astype(np.float32)


def librosa_stft_magnitude(wave: np.ndarray, n_fft: int, hop_length: int, pad_mode: str = "constant") -> np.ndarray:
    """|librosa.stft(wave, n_fft=n_fft, hop_length=hop_length)| with librosa's other defaults, without librosa.

    The steps of librosa.stft (librosa/core/spectrum.py, read at tags 0.8.1, 0.9.0 and 0.10.1 of
    github.com/librosa/librosa): win_length = n_fft; window = scipy.signal.get_window("hann",
    n_fft, fftbins=True) (the periodic Hann); center=True pads n_fft // 2 samples on both sides
    with `pad_mode` ("constant", i.e. zeros, since librosa 0.9.0; "reflect" before); frames of
    n_fft samples every hop_length (1 + (len + 2 (n_fft // 2) - n_fft) // hop_length of them);
    rfft of window x frame, stored as complex64 (the default dtype for float32 input). 0.10's
    head/tail split of the padding computes the same frames. Returns float32, (1 + n_fft // 2) x frames.
    """
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy import signal

    window = signal.get_window("hann", n_fft, fftbins=True)
    padded = np.pad(np.asarray(wave, dtype=np.float32), n_fft // 2, mode=pad_mode)
    if len(padded) < n_fft:
        raise ValueError(f"signal of {len(wave)} samples is too short for n_fft={n_fft}")
    frames = sliding_window_view(padded, n_fft)[::hop_length]  # frames x n_fft
    spectrum = np.fft.rfft(frames * window, axis=1).T.astype(np.complex64)
    return np.abs(spectrum)


def log_stft(wave: np.ndarray, rate: int, nperseg: int = 256, noverlap: int = 128) -> np.ndarray:
    """log(|STFT| + 1e-7), centred frames (scipy.signal.stft): (nperseg/2 + 1) x (1 + samples / hop)."""
    from scipy import signal

    _, _, spectrum = signal.stft(wave, rate, nperseg=nperseg, noverlap=noverlap)
    return np.log(np.abs(spectrum) + LOG_FLOOR).astype(np.float32)


def mel_filterbank(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters on the HTK mel scale, n_mels x (n_fft/2 + 1), each with unit peak."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(rate / 2), n_mels + 2))
    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(wave: np.ndarray, rate: int, n_fft: int = 512, window: int = 400, hop: int = 160,
            n_mels: int = 128) -> np.ndarray:
    """log(mel power + 1e-7) of centred frames: n_mels x (1 + samples / hop)."""
    from scipy import signal

    _, _, spectrum = signal.stft(wave, rate, nperseg=window, noverlap=window - hop, nfft=n_fft)
    power = np.abs(spectrum) ** 2
    return np.log(mel_filterbank(rate, n_fft, n_mels) @ power + LOG_FLOOR).astype(np.float32)


@dataclass(frozen=True)
class AudioFeatures:
    """How a waveform becomes the stored spectrogram: resample, loop to `seconds`, transform.

    kind: "spectrogram" (log PSD, scipy.signal.spectrogram), "stft" (log magnitude, centred) or
    "mel" (log mel power, centred). `params` are the transform's keyword arguments.
    """

    kind: str
    rate: int
    seconds: float
    params: tuple[tuple[str, Any], ...] = ()

    def compute(self, wave: np.ndarray) -> np.ndarray:
        transform = {"spectrogram": log_spectrogram, "stft": log_stft, "mel": log_mel}[self.kind]
        return transform(tile_to(wave, self.samples(self.seconds)), self.rate, **dict(self.params))

    def samples(self, seconds: float) -> int:
        return int(round(seconds * self.rate))

    def frames_for(self, seconds: float) -> int:
        """How many spectrogram frames `seconds` of audio gives (without computing one)."""
        params, n = dict(self.params), self.samples(seconds)
        if self.kind == "spectrogram":
            nperseg, noverlap = params.get("nperseg", 512), params.get("noverlap", 353)
            return (n - nperseg) // (nperseg - noverlap) + 1
        hop = params.get("hop") or params.get("nperseg", 256) - params.get("noverlap", 128)
        return -(-n // hop) + 1  # scipy.signal.stft pads the centred signal to whole hops

    def bins(self) -> int:
        """Frequency bins of the spectrogram (its height)."""
        params = dict(self.params)
        if self.kind == "mel":
            return params.get("n_mels", 128)
        if self.kind == "spectrogram":
            return params.get("nperseg", 512) // 2 + 1
        return params.get("nperseg", 256) // 2 + 1

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate, "seconds": self.seconds, **dict(self.params)}

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> "AudioFeatures":
        params = {k: v for k, v in described.items() if k not in ("kind", "rate", "seconds")}
        return cls(described["kind"], described["rate"], described["seconds"], tuple(sorted(params.items())))


# -- video ---------------------------------------------------------------------------------------
def _frame_time(frame, index: int, rate: float) -> float:
    return float(frame.time) if frame.time is not None else index / rate


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _decoded(path: Path) -> Iterator[tuple[float, Any, float | None]]:
    """(time, frame, clip duration or None) for each video frame of the file."""
    av = _av()
    container = _open(path)
    try:
        if not container.streams.video:
            raise MediaError(f"{path}: no video track")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        duration = _duration(container, stream)
        for index, frame in enumerate(container.decode(stream)):
            yield _frame_time(frame, index, rate), frame, duration
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError(f"{path}: video does not decode ({exc})") from None
    finally:
        container.close()


def _nearest(frame, time: float, previous, previous_time: float, target: float):
    return frame if previous is None or time - target <= target - previous_time else previous


def frames_at_fps(path: Path, fps: float = 1.0) -> list:
    """One frame per 1/fps seconds: the decoded frame nearest to each time k/fps from the clip's
    first frame (FFmpeg's `-vf fps=1`). The references extract with OpenCV instead, keeping frame
    number k * int(fps) (data/CREMAD/video_preprocessing.py of OGM-GE, C2KD, FD-CMKD): the same
    frame at integer frame rates; at 29.97 fps (int 29) theirs drift earlier by k * 0.97 / 29.97 s
    (0.3 s at second 9).
    Returns PIL images."""
    chosen, previous, previous_time, start, k = [], None, 0.0, None, 0
    for time, frame, _ in _decoded(path):
        start = time if start is None else start
        while time - start >= k / fps:
            chosen.append(_nearest(frame, time - start, previous, previous_time, k / fps).to_image())
            k += 1
        previous, previous_time = frame, time - start
    if previous is None:
        raise MediaError(f"{path}: video has no frames")
    return chosen


def middle_frame(path: Path):
    """The frame nearest to the middle of the clip, as a PIL image."""
    previous, previous_time, start, seen = None, 0.0, None, []
    for time, frame, duration in _decoded(path):
        start = time if start is None else start
        if duration is None:  # unknown length: keep every frame, choose at the end
            seen.append((time, frame))
            continue
        if time - start >= duration / 2:
            return _nearest(frame, time - start, previous, previous_time, duration / 2).to_image()
        previous, previous_time = frame, time - start
    if seen:
        middle = (seen[0][0] + seen[-1][0]) / 2
        return min(seen, key=lambda item: abs(item[0] - middle))[1].to_image()
    if previous is None:
        raise MediaError(f"{path}: video has no frames")
    return previous.to_image()


@dataclass(frozen=True)
class FrameSampling:
    """Which frames `prepare` stores: "fps" (every 1/fps s) or "middle"; stored with the shorter
    side at `shorter_side` px (loaders crop and resize to their image_size); `square` first cuts
    the centred square of side = frame height (RAVDESS: the face is centred, nothing downloads a
    face detector)."""

    mode: str = "fps"
    fps: float = 1.0
    shorter_side: int = 256
    square: bool = False

    def extract(self, path: Path) -> list:
        images = frames_at_fps(path, self.fps) if self.mode == "fps" else [middle_frame(path)]
        return [resize_shorter(centre_square(im) if self.square else im, self.shorter_side) for im in images]

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "fps": self.fps, "shorter_side": self.shorter_side, "square": self.square}


# -- images --------------------------------------------------------------------------------------
def centre_square(image):
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def resize_shorter(image, side: int):
    from PIL import Image

    scale = side / min(image.size)
    if scale >= 1:
        return image.convert("RGB")
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.BILINEAR)


def read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise MediaError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: not a readable image ({exc})") from None


def random_resized_box(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (the OGM-GE training transform), drawn from `rng`."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def image_array(image, size: int, box: tuple[int, int, int, int] | None = None, flip: bool = False,
                normalise: bool = True) -> np.ndarray:
    """Crop (optional), resize to size x size, flip (optional), scale to [0, 1], ImageNet-normalise: 3 x H x W."""
    from PIL import Image

    if box is not None:
        image = image.crop(box)
    image = image.resize((size, size), Image.BILINEAR)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 255.0
    if normalise:
        array = (array - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_npy(path: Path) -> np.ndarray:
    """A prepared .npy array (no pickles), checked finite; MediaError naming the file otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MediaError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise MediaError(f"{path}: not a readable .npy file ({exc})") from None
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise MediaError(f"{path}: holds NaN or infinite values; run `cmkd-bench verify` on the prepared folder")
    return array
