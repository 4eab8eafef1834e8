"""Segmentation data: synth-rgbd, paired augmentation seeded per sample, and NYU-Depth V2 in its three
layouts (a tiny fake set written here: an HDF5 .mat with its split and mapping files; ESANet's
prepared folder as TUI-NICR/ESANet's src/datasets/nyuv2/prepare_dataset.py writes it; a flat folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd_bench.data.spec import AugmentedPairs, DecodedPairs
from cmkd_bench.datasets.rgbd_augment import augment_arrays
from cmkd_bench.datasets.synth_rgbd import CLASS_NAMES, DEPTH_MEAN, DEPTH_STD
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

TINY = {"image_size": 16, "train": 24, "val": 4, "test": 4}


# -- synth-rgbd ------------------------------------------------------------------------------------
def test_synth_rgbd_is_deterministic_per_seed_and_shaped_as_declared():
    first, again = DATASETS.build("synth-rgbd", None, **TINY), DATASETS.build("synth-rgbd", None, **TINY)
    other = DATASETS.build("synth-rgbd", None, **TINY, data_seed=1)
    for key in ("rgb", "depth", "label"):
        assert torch.equal(first.splits["train"][key], again.splits["train"][key])
    assert not torch.equal(first.splits["train"]["rgb"], other.splits["train"]["rgb"])
    spec, train = first.spec, first.splits["train"]
    assert spec.task == "segmentation" and spec.num_classes == len(CLASS_NAMES) == 6
    assert train["rgb"].shape == (24, *spec.modalities["rgb"].shape) and train["depth"].shape == (24, 1, 16, 16)
    assert train["label"].shape == (24, 16, 16) and set(train["label"].unique().tolist()) == set(range(6))
    assert 0 <= train["rgb"].min() and train["rgb"].max() <= 1


def test_synth_rgbd_leaves_each_modality_some_ambiguous_classes():
    data = DATASETS.build("synth-rgbd", None, image_size=32, train=64, val=4, test=4)
    rgb, depth, label = data.splits["train"]["rgb"], data.splits["train"]["depth"][:, 0], data.splits["train"]["label"]
    colour = {c: rgb.permute(1, 0, 2, 3)[:, label == c].mean(dim=1) for c in range(6)}
    assert (colour[1] - colour[2]).abs().max() < 0.03 and (colour[4] - colour[5]).abs().max() < 0.03  # same paint
    assert (colour[1] - colour[3]).abs().max() > 0.2  # cone's blue is unique
    metres = torch.where(depth == 0, torch.nan, depth * DEPTH_STD + DEPTH_MEAN)
    plane = metres.nanmean(dim=(1, 2), keepdim=True).expand_as(metres)  # rough per-scene background level
    relief = {c: (metres - plane)[label == c].nanmean().item() for c in range(6)}
    assert abs(relief[4] - relief[0]) < 0.05  # posters are flush with the wall: invisible in depth
    assert relief[1] < relief[0] - 0.2 and relief[5] > relief[0]  # boxes stand out, holes recede
    assert 0.01 < (depth == 0).float().mean() < 0.15  # missing depth pixels


# -- paired augmentation -----------------------------------------------------------------------------
def test_augmentation_moves_rgb_depth_and_labels_together():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (24, 32)).astype(np.int64)
    label[:, :16] = 255  # an ignored half, so flips and crops are visible
    code = np.where(label == 255, 5, label)
    depth = (1.0 + 0.5 * code).astype(np.float32)  # depth encodes the label: 1 .. 3.5 m, steps far above the noise
    rgb = np.repeat((label % 256 / 255.0)[..., None], 3, axis=2).astype(np.float32)
    moved = 0
    for seed in range(6):
        out_rgb, out_depth, out_label = augment_arrays(rgb, depth, label, seed)
        assert out_rgb.shape == rgb.shape and out_depth.shape == depth.shape and out_label.shape == label.shape
        kept = out_depth > 0  # the rest was dropped as missing
        assert 0.95 < kept.mean() < 1.0
        out_code = np.where(out_label == 255, 5, out_label)
        assert np.array_equal(np.round((out_depth[kept] - 1.0) * 2).astype(np.int64), out_code[kept])
        assert 0 < np.abs(out_depth[kept] - (1.0 + 0.5 * out_code[kept])).mean() < 0.05  # depth noise, depth only
        bright = out_rgb.mean(axis=2)
        assert bright[out_label == 255].mean() > bright[out_label < 5].mean() + 0.5  # RGB moved with the labels
        assert set(np.unique(out_label)) <= set(range(5)) | {255}  # nearest-neighbour labels
        moved += not np.array_equal(out_label, label)
    assert moved >= 3


def test_augmented_batches_come_from_the_batch_seed_alone():
    base = DATASETS.build("synth-rgbd", None, **TINY)
    data = DATASETS.build("synth-rgbd", None, **TINY, augment=True)
    assert isinstance(data, AugmentedPairs)

    def first_batch(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        return next(data.batches("train", 8, shuffle=True, seed=seed))

    a, b, c = first_batch(5, 0), first_batch(5, 123), first_batch(6, 0)
    plain = next(base.batches("train", 8, shuffle=True, seed=5))
    assert all(torch.equal(a[k], b[k]) for k in a)  # global random state plays no part
    assert torch.equal(a["index"], plain["index"]) and not torch.equal(a["depth"], plain["depth"])
    assert not torch.equal(a["depth"], c["depth"])
    val, val_plain = next(data.batches("val", 4, shuffle=False)), next(base.batches("val", 4, shuffle=False))
    assert all(torch.equal(val[k], val_plain[k]) for k in val)  # evaluation is never augmented


# -- NYU-Depth V2: a tiny fake set in the three layouts ----------------------------------------------
N, HEIGHT, WIDTH = 6, 32, 48
TRAIN_IDS, TEST_IDS = [3, 4, 5, 6], [1, 2]  # 1-based, the first of the real splits.mat (trainNdxs 3 4 5 6 ..., testNdxs 1 2 9 ...)


def fake_nyu() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (N, HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[:, 0, 0] = [255, 0, 0]  # top-left pixel red: catches transposed or BGR reads
    depth_m = rng.integers(500, 6000, (N, HEIGHT, WIDTH)).astype(np.float32) / 1000.0
    raw = rng.integers(0, 895, (N, HEIGHT, WIDTH)).astype(np.uint16)
    raw[:, :, :4] = 0  # unlabelled strip
    mapping = (np.arange(894) % 40 + 1).astype(np.float64)  # 894 -> 40
    return {"rgb": rgb, "depth": depth_m, "raw": raw, "mapping": mapping}


def write_mat_layout(root, arrays) -> None:
    import h5py
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:  # MATLAB v7.3 = HDF5, column-major views
        f["images"] = arrays["rgb"].transpose(0, 3, 2, 1)
        f["depths"] = arrays["depth"].transpose(0, 2, 1)
        f["labels"] = arrays["raw"].transpose(0, 2, 1)
    savemat(root / "splits.mat", {"trainNdxs": np.array(TRAIN_IDS)[:, None], "testNdxs": np.array(TEST_IDS)[:, None]})
    savemat(root / "classMapping40.mat", {"mapClass": arrays["mapping"][None]})


def write_folder_layout(root, arrays) -> None:
    import cv2

    for kind in ("rgb", "depth", "label"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    labels_40 = np.concatenate([[0], arrays["mapping"]]).astype(np.uint8)[arrays["raw"]]
    for i in range(N):
        name = f"{i + 1:04d}"
        cv2.imwrite(str(root / "rgb" / f"{name}.png"), arrays["rgb"][i][..., ::-1])
        cv2.imwrite(str(root / "depth" / f"{name}.png"), np.round(arrays["depth"][i] * 1000).astype(np.uint16))
        cv2.imwrite(str(root / "label" / f"{name}.png"), labels_40[i])
    (root / "train.txt").write_text("".join(f"{i:04d}\n" for i in TRAIN_IDS))
    (root / "test.txt").write_text("".join(f"{i:04d}.png\n" for i in TEST_IDS))


def write_esanet_layout(root, arrays, bom: bool = False) -> None:
    """What ESANet's prepare_dataset.py writes: ROOT/{train,test}/{rgb,depth,depth_raw,labels_40}/%04d.png
    (RGB written BGR by OpenCV, depth in mm as uint16, labels 0 = void, 1..40) and train.txt /
    test.txt from np.savetxt(fmt='%04d')."""
    import cv2

    labels_40 = np.concatenate([[0], arrays["mapping"]]).astype(np.uint8)[arrays["raw"]]
    for split, ids in (("train", TRAIN_IDS), ("test", TEST_IDS)):
        for kind in ("rgb", "depth", "depth_raw", "labels_40", "labels_40_colored"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for idx in ids:
            name, i = f"{idx:04d}", idx - 1
            cv2.imwrite(str(root / split / "rgb" / f"{name}.png"), cv2.cvtColor(arrays["rgb"][i], cv2.COLOR_RGB2BGR))
            depth_mm = (arrays["depth"][i] * 1e3).astype("uint16")
            cv2.imwrite(str(root / split / "depth" / f"{name}.png"), depth_mm)
            cv2.imwrite(str(root / split / "depth_raw" / f"{name}.png"), depth_mm // 2)  # never read
            cv2.imwrite(str(root / split / "labels_40" / f"{name}.png"), labels_40[i])
        np.savetxt(root / f"{split}.txt", np.array(ids), fmt="%04d")
    if bom:
        (root / "train.txt").write_bytes(b"\xef\xbb\xbf" + (root / "train.txt").read_bytes())


@pytest.fixture(scope="module")
def nyu_roots(tmp_path_factory):
    arrays = fake_nyu()
    root = tmp_path_factory.mktemp("nyu")
    write_mat_layout(root / "mat", arrays)
    write_folder_layout(root / "folder", arrays)
    write_esanet_layout(root / "esanet", arrays)
    return root, arrays


def build_nyu(path, **options) -> DecodedPairs:
    return DATASETS.build("nyuv2", path, height=HEIGHT, width=WIDTH, val_fraction=0.25, num_workers=0, **options)


def test_nyuv2_mat_layout_decodes_orientation_labels_depth_and_splits(nyu_roots):
    root, arrays = nyu_roots
    data = build_nyu(root / "mat")
    spec = data.spec
    assert spec.num_classes == 40 and spec.ignore_index == 255 and spec.task == "segmentation"
    assert spec.split_sizes == {"train": 3, "val": 1, "test": 2} and spec.options["layout"] == "mat"
    assert spec.options["protocol"] == "esanet"
    assert "num_workers" not in spec.options  # decoding processes do not name the run
    batch = next(data.batches("test", 4, shuffle=False))
    assert batch["rgb"].shape == (2, 3, HEIGHT, WIDTH) and batch["depth"].shape == (2, 1, HEIGHT, WIDTH)
    i = TEST_IDS[0] - 1
    rgb = batch["rgb"][0] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    assert torch.allclose(rgb * 255, torch.from_numpy(arrays["rgb"][i]).permute(2, 0, 1).float(), atol=1e-3)
    depth_mm = batch["depth"][0, 0] * 1417.2594281672277 + 2841.94941272766
    assert torch.allclose(depth_mm, torch.from_numpy(arrays["depth"][i] * 1000), atol=1e-2)
    expected = np.where(arrays["raw"][i] == 0, 255, arrays["mapping"][arrays["raw"][i].astype(int) - 1] - 1)
    assert torch.equal(batch["label"][0], torch.from_numpy(expected.astype(np.int64)))
    assert (batch["label"][0, :, :4] == 255).all()


def test_nyuv2_folder_layout_gives_the_same_samples(nyu_roots):
    root, _ = nyu_roots
    from_mat, from_folder = build_nyu(root / "mat"), build_nyu(root / "folder")
    assert from_folder.spec.options["layout"] == "folder" and from_folder.spec.split_sizes == from_mat.spec.split_sizes
    for split in ("train", "val", "test"):
        a, b = next(from_mat.batches(split, 8, shuffle=False)), next(from_folder.batches(split, 8, shuffle=False))
        assert torch.equal(a["label"], b["label"]) and torch.allclose(a["rgb"], b["rgb"])
        assert torch.allclose(a["depth"], b["depth"], atol=1e-5)
    build_nyu(root / "mat" / "nyu_depth_v2_labeled.mat")  # the .mat itself also works


def test_nyuv2_reads_esanet_s_prepared_folder_as_it_is(nyu_roots, tmp_path):
    root, arrays = nyu_roots
    assert (root / "esanet" / "train.txt").read_text() == "0003\n0004\n0005\n0006\n"  # np.savetxt(fmt='%04d')
    from_mat, from_esanet = build_nyu(root / "mat"), build_nyu(root / "esanet")
    assert from_esanet.spec.options["layout"] == "esanet" and from_esanet.spec.split_sizes == from_mat.spec.split_sizes
    for split in ("train", "val", "test"):  # val images are read from train/, test images from test/
        a, b = next(from_mat.batches(split, 8, shuffle=False)), next(from_esanet.batches(split, 8, shuffle=False))
        assert torch.equal(a["label"], b["label"]) and torch.allclose(a["rgb"], b["rgb"])
        assert torch.allclose(a["depth"], b["depth"], atol=1e-3)
    bom = tmp_path / "bom"
    write_esanet_layout(bom, arrays, bom=True)
    assert build_nyu(bom).spec.split_sizes == from_mat.spec.split_sizes  # a byte-order mark renames no image
    (bom / "train" / "depth" / "0005.png").unlink()
    (bom / "train" / "rgb" / "0006.png").unlink()
    with pytest.raises(UserError, match=r"train/depth/0005\.png' does not exist .listed in train.txt/test.txt. "
                                        r"\(and 1 more listed files are missing\); ESANet writes") as caught:
        build_nyu(bom)
    assert "\n" not in str(caught.value)


def test_nyuv2_shuffles_and_augments_from_the_seed_whatever_the_workers(nyu_roots):
    root, _ = nyu_roots
    data = build_nyu(root / "mat")
    one = list(data.batches("train", 2, shuffle=True, seed=3))
    assert len(one) == data.num_batches("train", 2, shuffle=True) == 1
    again = list(data.batches("train", 2, shuffle=True, seed=3))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(one, again) for k in x)
    data.workers = 1  # decoded in another process: the same samples, the same augmentation
    forked = list(data.batches("train", 2, shuffle=True, seed=3))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(one, forked) for k in x)
    plain = build_nyu(root / "mat", augment=False)
    assert not torch.equal(next(plain.batches("train", 2, shuffle=True, seed=3))["depth"], one[0]["depth"])


def test_nyuv2_missing_or_malformed_files_are_one_line_errors(nyu_roots, tmp_path):
    root, arrays = nyu_roots
    with pytest.raises(UserError, match="needs --data-root"):
        DATASETS.build("nyuv2", None)
    broken = tmp_path / "broken"
    write_mat_layout(broken, arrays)
    (broken / "splits.mat").unlink()
    with pytest.raises(UserError, match=r"splits\.mat.*does not exist"):
        build_nyu(broken)
    (broken / "splits.mat").write_text("not a mat file")
    with pytest.raises(UserError, match=r"splits\.mat.*not a readable MATLAB file"):
        build_nyu(broken)
    (broken / "nyu_depth_v2_labeled.mat").write_text("not hdf5")
    with pytest.raises(UserError, match="not an HDF5"):
        build_nyu(broken)
    folder = tmp_path / "folder"
    write_folder_layout(folder, arrays)
    (folder / "depth" / "0002.png").unlink()
    with pytest.raises(UserError, match=r"depth/0002\.png.*does not exist"):
        build_nyu(folder)
    (folder / "depth" / "0002.png").write_bytes(b"garbage")
    (folder / "rgb" / "0003.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"rgb/0003\.png.*not a readable PNG"):
        build_nyu(folder)
    (folder / "train.txt").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    with pytest.raises(UserError, match="Git LFS pointer"):
        build_nyu(folder)
    with pytest.raises(UserError, match="neither"):
        build_nyu(tmp_path)
