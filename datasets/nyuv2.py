"""nyuv2: the NYU-Depth V2 labelled set (Silberman et al., ECCV 2012): RGB <-> depth segmentation.

1449 indoor RGB-D images, 480 x 640, with the standard split of 795 train / 654 test images and
the 40-class labelling of Gupta et al. (CVPR 2013); unlabelled pixels are ignored (index 255).
A fixed, seeded `val_fraction` of the 795 train images is held out for model selection.

`--data-root` holds one of three layouts:

1. the official files, side by side (or `--data-root` names the .mat file itself):
     nyu_depth_v2_labeled.mat  the labelled set (HDF5, MATLAB v7.3), from
                               http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat
     splits.mat                trainNdxs (795) and testNdxs (654), 1-based, from
                               http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat
     classMapping40.mat        mapClass: the 894 labels -> 40 classes (Gupta et al.), as shipped by
                               github.com/ankurhanda/nyuv2-meta-data (and TUI-NICR/ESANet, src/datasets/nyuv2/)
   The .mat's `depths` (in-painted depth, metres) are used.
2. ESANet's prepared folder, as TUI-NICR/ESANet's src/datasets/nyuv2/prepare_dataset.py writes it
   (and src/datasets/nyuv2/pytorch_dataset.py reads it):
     train.txt, test.txt               the 1-based image numbers, `%04d`, one per line (np.savetxt)
     train/rgb/0003.png                8-bit RGB (written BGR by OpenCV, read back as RGB)
     train/depth/0003.png              16-bit refined depth in millimetres, 0 = missing
     train/labels_40/0003.png          8-bit 40-class labels, 1..40, 0 = void
     test/...                          the same for the test images
   (depth_raw/, labels_13/, labels_894/ and the *_colored/ folders ESANet also writes are not read.)
3. a flat folder (the suite's own): rgb/NAME.png, depth/NAME.png, label/NAME.png as in 2, with
   train.txt and test.txt listing NAME (with or without .png).
The lists are read as UTF-8 with or without a byte-order mark.

Samples are decoded one at a time by `num_workers` DataLoader processes (the set is ~4 GB as
float tensors).
Inputs follow ESANet (Seichter et al., ICRA 2021; TUI-NICR/ESANet): RGB normalised with the
ImageNet mean and std; depth in millimetres standardised with NYUv2's mean 2841.95 and std
1417.26, missing pixels at 0. Training images are augmented (`augment`, see rgbd_augment.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmkd_bench.data import DatasetSpec, DecodedPairs, Modality, Recipe, SampleSeed
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

MAT_FILE, SPLITS_FILE, MAPPING_FILE = "nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"
NUM_CLASSES, IGNORE = 40, 255
RGB_MEAN, RGB_STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
DEPTH_MEAN_MM, DEPTH_STD_MM = 2841.94941272766, 1417.2594281672277  # ESANet, NYUv2 refined depth
# ESANet's NYUv2 training (src/args.py): SGD, momentum 0.9, weight decay 1e-4, lr 0.01, batch 8,
# 500 epochs at 480 x 640. Its one-cycle schedule is replaced by poly(0.9), the DeepLab schedule.
RECIPE = Recipe(epochs=500, batch_size=8, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=1e-4, schedule="poly")
RECIPE_SOURCE = ("ESANet (Seichter et al., ICRA 2021), NYUv2: SGD lr 0.01, momentum 0.9, wd 1e-4, batch 8, "
                 "500 epochs; poly(0.9) instead of its one-cycle schedule")


def _fail(path: Path, problem: str) -> UserError:
    return UserError(f"nyuv2: {str(path)!r} {problem}")


# -- reading ---------------------------------------------------------------------------------------
def _load_small_mat(path: Path, keys: tuple[str, ...], source: str) -> dict[str, np.ndarray]:
    """A MATLAB file's arrays (v5 via scipy, v7.3 via h5py), each flattened; names a missing file or key."""
    if not path.is_file():
        raise _fail(path, f"does not exist; put {path.name} beside the data ({source})")
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        try:
            content = loadmat(path)
        except NotImplementedError:  # v7.3 files are HDF5
            import h5py

            with h5py.File(path, "r") as handle:
                content = {k: np.array(handle[k]) for k in keys if k in handle}
    except (MatReadError, ValueError, OSError, TypeError) as exc:
        raise _fail(path, f"is not a readable MATLAB file ({type(exc).__name__}); get a fresh copy ({source})") from None
    missing = [k for k in keys if k not in content]
    if missing:
        raise _fail(path, f"has no {', '.join(missing)}; expected {', '.join(keys)} ({source})")
    return {k: np.asarray(content[k]).reshape(-1) for k in keys}


def _label_map(mapping_894: np.ndarray) -> np.ndarray:
    """Raw label (0 = unlabelled, 1..894) -> 0..39, or IGNORE for unlabelled pixels."""
    to_40 = np.concatenate([[0], mapping_894.astype(np.int64)])
    return np.where(to_40 > 0, to_40 - 1, IGNORE).astype(np.uint8)


def _finish(rgb: np.ndarray, depth_mm: np.ndarray, label: np.ndarray, size: tuple[int, int],
            seed: int | None) -> dict[str, torch.Tensor]:
    """Resize to the working size, augment (training), normalise; RGB uint8 H x W x 3, depth in mm."""
    import cv2

    if rgb.shape[:2] != size:
        rgb = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_LINEAR)
        depth_mm = cv2.resize(depth_mm, size[::-1], interpolation=cv2.INTER_NEAREST)
        label = cv2.resize(label, size[::-1], interpolation=cv2.INTER_NEAREST)
    rgb = rgb.astype(np.float32) / 255.0
    depth_mm = depth_mm.astype(np.float32)
    if seed is not None:
        from cmkd_bench.datasets.rgbd_augment import augment_arrays

        rgb, depth_m, label = augment_arrays(rgb, depth_mm / 1000.0, label, seed)
        depth_mm = depth_m * 1000.0
    depth = np.where(depth_mm > 0, (depth_mm - DEPTH_MEAN_MM) / DEPTH_STD_MM, 0.0).astype(np.float32)
    rgb = ((rgb - RGB_MEAN) / RGB_STD).transpose(2, 0, 1)
    return {"rgb": torch.from_numpy(np.ascontiguousarray(rgb)), "depth": torch.from_numpy(depth)[None],
            "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))}


class MatSource:
    """Samples of the official .mat (opened lazily, once per DataLoader worker process)."""

    def __init__(self, path: Path, indices: dict[str, np.ndarray], labels: np.ndarray, size: tuple[int, int],
                 augment: bool) -> None:
        self.path, self.indices, self.labels, self.size, self.augment = path, indices, labels, size, augment
        self._handle, self._pid = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": None}  # h5py handles do not cross processes

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._handle

    def __call__(self, split: str, position: int, seed: int | None) -> dict[str, torch.Tensor]:
        i, f = int(self.indices[split][position]), self._file()
        # MATLAB stores column-major: h5py sees images as 3 x W x H and maps as W x H
        rgb = np.ascontiguousarray(f["images"][i].transpose(2, 1, 0))
        depth_mm = np.ascontiguousarray(f["depths"][i].T) * 1000.0
        label = self.labels[np.asarray(f["labels"][i].T).clip(0, len(self.labels) - 1)]
        return _finish(rgb, depth_mm, label, self.size, seed if self.augment else None)


FOLDERS = {"esanet": {"rgb": "rgb", "depth": "depth", "label": "labels_40"},
           "folder": {"rgb": "rgb", "depth": "depth", "label": "label"}}


class FolderSource:
    """Samples of a folder layout (PNG files): ESANet's (ROOT/{train,test}/KIND/NAME.png) or the
    flat one (ROOT/KIND/NAME.png)."""

    def __init__(self, root: Path, layout: str, names: dict[str, list[str]], size: tuple[int, int],
                 augment: bool) -> None:
        self.root, self.layout, self.names, self.size, self.augment = root, layout, names, size, augment
        # ESANet: each name lives in the folder of the list it came from (val names come from train.txt)
        self.home = {name: listed for listed, split_names in names.items() for name in split_names}

    def path(self, kind: str, name: str) -> Path:
        folder = FOLDERS[self.layout][kind]
        if self.layout == "esanet":
            return self.root / self.home[name] / folder / f"{name}.png"
        return self.root / folder / f"{name}.png"

    def read(self, kind: str, name: str) -> np.ndarray:
        import cv2

        path = self.path(kind, name)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise _fail(path, "is not a readable PNG")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image

    def __call__(self, split: str, position: int, seed: int | None) -> dict[str, torch.Tensor]:
        name = self.names[split][position]
        raw = self.read("label", name).astype(np.int64)
        label = np.where(raw > 0, raw - 1, IGNORE).astype(np.uint8)
        return _finish(self.read("rgb", name), self.read("depth", name), label, self.size,
                       seed if self.augment else None)


@dataclass(frozen=True)
class SplitReader:
    """One split of a source, as DecodedPairs reads it (the source returns the label map itself)."""

    source: MatSource | FolderSource
    split: str
    size: int

    def __len__(self) -> int:
        return self.size

    def read(self, index: int, seed: SampleSeed | None) -> dict[str, torch.Tensor]:
        return self.source(self.split, index, None if seed is None else int(seed))


# -- layouts ---------------------------------------------------------------------------------------
def _mat_layout(mat: Path, size: tuple[int, int], augment: bool) -> tuple[MatSource, dict[str, np.ndarray], str]:
    import h5py

    try:
        with h5py.File(mat, "r") as f:
            shapes = {k: f[k].shape for k in ("images", "depths", "labels")}
    except OSError:
        raise _fail(mat, "is not an HDF5 (MATLAB v7.3) file; download nyu_depth_v2_labeled.mat again") from None
    except KeyError as exc:
        raise _fail(mat, f"has no {exc.args[0]!r} dataset; expected images, depths and labels") from None
    n = shapes["images"][0]
    if len(shapes["images"]) != 4 or shapes["images"][1] != 3 or shapes["depths"][0] != n or shapes["labels"][0] != n:
        raise _fail(mat, f"has unexpected shapes {shapes}; expected images N x 3 x W x H, depths and labels N x W x H")
    splits = _load_small_mat(mat.with_name(SPLITS_FILE), ("trainNdxs", "testNdxs"), "the NYU indoor_seg_sup page")
    mapping = _load_small_mat(mat.with_name(MAPPING_FILE), ("mapClass",), "ankurhanda/nyuv2-meta-data")["mapClass"]
    for key, idx in splits.items():
        if idx.size == 0 or idx.min() < 1 or idx.max() > n:
            raise _fail(mat.with_name(SPLITS_FILE), f"has {key} outside 1..{n} (the .mat holds {n} images)")
    if mapping.size == 0 or mapping.min() < 0 or mapping.max() > NUM_CLASSES:
        raise _fail(mat.with_name(MAPPING_FILE), f"mapClass must map to 0..{NUM_CLASSES}")
    indices = {"train": splits["trainNdxs"].astype(np.int64) - 1, "test": splits["testNdxs"].astype(np.int64) - 1}
    fingerprint = _digest([mat.with_name(SPLITS_FILE), mat.with_name(MAPPING_FILE)], extra=str(mat.stat().st_size))
    return MatSource(mat, indices, _label_map(mapping), size, augment), indices, fingerprint


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise _fail(path, "does not exist; the folder layouts need train.txt and test.txt (one image name per line)")
    raw = path.read_bytes()
    if raw.startswith(b"version https://git-lfs.github.com/spec/"):
        raise _fail(path, "is a Git LFS pointer file, not the list; run `git lfs pull` in its clone")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _fail(path, "is not UTF-8 text; list one image name per line") from None
    names = [line.strip().removesuffix(".png") for line in text.splitlines() if line.strip()]
    if not names:
        raise _fail(path, "lists no samples")
    return names


def _folder_layout(root: Path, layout: str, size: tuple[int, int], augment: bool) -> tuple[FolderSource, dict[str, list[str]], str]:
    names = {"train": _read_names(root / "train.txt"), "test": _read_names(root / "test.txt")}
    both = set(names["train"]) & set(names["test"])
    if both:
        raise _fail(root / "test.txt", f"lists {sorted(both)[0]}, which train.txt lists too ({len(both)} such names); "
                                       f"a sample belongs to one split")
    source = FolderSource(root, layout, {k: list(v) for k, v in names.items()}, size, augment)
    absent = [source.path(kind, name) for split_names in names.values() for name in split_names
              for kind in ("rgb", "depth", "label") if not source.path(kind, name).is_file()]
    if absent:
        more = f" (and {len(absent) - 1} more listed files are missing)" if len(absent) > 1 else ""
        raise _fail(absent[0], f"does not exist (listed in train.txt/test.txt){more}; "
                               f"{'ESANet writes ROOT/{train,test}/{rgb,depth,labels_40}/NNNN.png' if layout == 'esanet' else 'the flat layout needs ROOT/{rgb,depth,label}/NAME.png'}")
    first = source("train", 0, None)  # a malformed file fails here, in one line, not in a worker
    if first["label"].shape != size:
        raise _fail(root, f"decodes to {tuple(first['label'].shape)} labels; expected {size}")
    return source, names, _digest([root / "train.txt", root / "test.txt"])


def _digest(paths: list[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _find_mat(root: Path) -> Path | None:
    if root.is_file():
        return root
    return root / MAT_FILE if (root / MAT_FILE).is_file() else None


def _hold_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in the official train list) kept for training and held out for validation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    count = min(n - 1, max(1, round(fraction * n)))
    return np.sort(order[count:]), np.sort(order[:count])


@DATASETS.register("nyuv2", aliases=("nyu-depth-v2", "nyudv2"), tasks=("segmentation",),
                   description="NYU-Depth V2 labelled set, RGB <-> depth, 40 classes (795 train / 654 test); --data-root")
def nyuv2(data_root: Path | None, protocol: str = "esanet", height: int = 480, width: int = 640, val_fraction: float = 0.1,
          split_seed: int = 0, augment: bool = True, num_workers: int = 4) -> DecodedPairs:
    """`height` x `width` is the working size (the standard evaluation is at the native 480 x 640).
    `num_workers` decoding processes change no result, so they are not part of the run's identity."""
    if protocol != "esanet":
        raise UserError(f"nyuv2: unknown protocol {protocol!r}; nyuv2 has one, esanet (ESANet's inputs and normalisation)")
    if data_root is None:
        raise UserError(f"dataset nyuv2 needs --data-root: a folder with {MAT_FILE}, {SPLITS_FILE} and {MAPPING_FILE}, "
                        "or ESANet's prepared folder (train.txt, test.txt, train/, test/)")
    if not data_root.exists():
        raise _fail(data_root, "does not exist; pass the folder that holds the NYUv2 files")
    if height < 32 or width < 32 or not 0 < val_fraction < 1 or num_workers < 0:
        raise UserError(f"nyuv2 needs height, width >= 32, 0 < val_fraction < 1 and num_workers >= 0 "
                        f"(got {height}, {width}, {val_fraction}, {num_workers})")
    size = (height, width)
    mat = _find_mat(data_root)
    if mat is not None:
        source, lists, fingerprint = _mat_layout(mat, size, augment)
        layout = "mat"
    elif (data_root / "train" / "rgb").is_dir() or (data_root / "test" / "rgb").is_dir():
        layout = "esanet"
        source, lists, fingerprint = _folder_layout(data_root, layout, size, augment)
    elif (data_root / "train.txt").exists() or (data_root / "rgb").is_dir():
        layout = "folder"
        source, lists, fingerprint = _folder_layout(data_root, layout, size, augment)
    else:
        raise _fail(data_root, f"holds neither {MAT_FILE} nor ESANet's prepared folder (train.txt, test.txt, "
                               f"train/rgb/, train/depth/, train/labels_40/, test/...) nor the flat folder layout")
    keep, held = _hold_out(len(lists["train"]), val_fraction, split_seed)
    train_list = lists["train"]
    chosen = {"train": [train_list[i] for i in keep], "val": [train_list[i] for i in held], "test": list(lists["test"])}
    if layout == "mat":
        source.indices = {k: np.asarray(v, dtype=np.int64) for k, v in chosen.items()}
    else:
        source.names = chosen  # source.home still maps each name to the folder of its list
    spec = DatasetSpec(
        name="nyuv2", task="segmentation", num_classes=NUM_CLASSES, ignore_index=IGNORE,
        modalities={"rgb": Modality((3, height, width), "deeplabv3plus:resnet18", "RGB, ImageNet-normalised"),
                    "depth": Modality((1, height, width), "deeplabv3plus:resnet18",
                                      "depth standardised (mm, mean 2841.95, std 1417.26), 0 = missing")},
        teacher_modality="rgb", student_modality="depth", recipe=RECIPE,
        split_sizes={k: len(v) for k, v in chosen.items()}, recipe_source=RECIPE_SOURCE,
        options={"protocol": protocol, "height": height, "width": width, "val_fraction": val_fraction, "split_seed": split_seed,
                 "augment": augment, "layout": layout, "fingerprint": fingerprint},
    )
    return DecodedPairs(spec, {split: SplitReader(source, split, len(v)) for split, v in chosen.items()}, num_workers)
