"""The packed store (cmkd_bench/data/packed.py), its readers (datasets/_av_packed.py) and the batch
augmentation on the device (cmkd_bench/data/gpu_augment.py), against the per-file path and PIL."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cmkd_bench.data.clips import clips_fingerprint
from cmkd_bench.data.gpu_augment import crop_resize_flip, normalised as normalise_batch, stored_box
from cmkd_bench.data.loading import batch_buffer
from cmkd_bench.data.media import IMAGENET_MEAN, IMAGENET_STD, image_array, random_resized_box
from cmkd_bench.data.packed import PACKED_DIR, PackedSplit
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from conftest import cli
from test_prepare import FAKES, prepare_in_process

OPTIONS = {"image_size": 32, "num_workers": 0, "val_fraction": 0.5}


def normalised(pixels: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W, the formula of media.image_array."""
    return ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def test_a_whole_frame_at_its_own_size_is_the_normalised_frame_and_a_flip_mirrors_it():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 1, 8, 8, 3), dtype=np.uint8)  # B x k x S x S x 3
    out = crop_resize_flip(torch.from_numpy(pixels), [(0, 0, 8, 8)] * 2, [False, True], size=8)
    assert out.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(out[0].numpy(), normalised(pixels[0, 0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1].numpy(), normalised(pixels[1, 0])[:, :, ::-1], rtol=1e-5, atol=1e-5)


def test_a_half_size_box_at_half_size_takes_exactly_those_pixels_of_every_frame():
    pixels = np.random.default_rng(1).integers(0, 256, size=(1, 2, 8, 8, 3), dtype=np.uint8)  # two frames
    out = crop_resize_flip(torch.from_numpy(pixels), [(4, 2, 8, 6)], [False], size=4)
    assert out.shape == (1, 6, 4, 4)
    for k in range(2):
        np.testing.assert_allclose(out[0, 3 * k:3 * k + 3].numpy(), normalised(pixels[0, k, 2:6, 4:8]), atol=1e-5)


def test_normalising_a_float_batch_gives_the_formula_and_leaves_the_batch_as_it_was():
    # the device path hands `normalised` float pixels; it must not scale the caller's tensor in place
    pixels = np.random.default_rng(2).integers(0, 256, size=(2, 3, 5, 2, 3), dtype=np.uint8)  # B x H x W x k x 3
    hwc = torch.from_numpy(pixels).float()
    out = normalise_batch(hwc)
    assert torch.equal(hwc, torch.from_numpy(pixels).float())
    assert out.shape == (2, 6, 3, 5) and out.is_contiguous(memory_format=torch.channels_last)
    for k in range(2):
        np.testing.assert_allclose(out[1, 3 * k:3 * k + 3].numpy(), normalised(pixels[1, :, :, k]), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.int64, torch.bool])
def test_a_batch_buffer_is_a_writable_cpu_tensor_of_the_shape_and_dtype_asked(dtype):
    buffer = batch_buffer((3, 1024, 1024), dtype)  # 4 MiB and more for every dtype but bool's 3 MiB
    assert buffer.shape == (3, 1024, 1024) and buffer.dtype == dtype and buffer.device.type == "cpu"
    values = (torch.arange(3 * 1024 * 1024) % 2).reshape(3, 1024, 1024).to(dtype)
    assert torch.equal(torch.stack(list(values), out=buffer), values) and torch.equal(buffer, values)


def test_a_batch_buffer_is_handed_out_again_only_once_nothing_holds_it():
    shape = (2, 1024, 1024)  # 2 MiB of uint8: pooled
    first = batch_buffer(shape, torch.uint8)
    first.fill_(7)
    view, array_view = first[1], first.numpy()[0]  # a tensor view and a numpy view of it
    address = first.data_ptr()
    del first
    held = batch_buffer(shape, torch.uint8)
    assert held.data_ptr() != address  # views still hold the first buffer
    held.fill_(9)
    assert int(view.min()) == int(array_view.max()) == 7
    del view, array_view, held
    again = [batch_buffer(shape, torch.uint8) for _ in range(2)]
    assert {t.data_ptr() for t in again} >= {address}  # released: reused
    assert again[0].data_ptr() != again[1].data_ptr()  # never the same buffer twice at once


def test_a_random_crop_of_a_smooth_frame_matches_pils():
    """The per-file path: PIL crop of the JPEG-sized frame, resize; the packed: the frame squashed to S x S once."""
    width, height, side, size = 85, 64, 64, 56
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 3, y * 4, (x + y) * 1.5], -1).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    packed = np.array(image.resize((side, side), Image.BILINEAR))[None, None]
    rng = np.random.default_rng(4)
    for _ in range(5):
        box = random_resized_box(rng, width, height)
        want = image_array(image, size, box, flip=False)
        got = crop_resize_flip(torch.from_numpy(packed), [stored_box(box, width, height, side)], [False], size)[0]
        assert np.abs(got.numpy() - want).mean() < 0.03  # normalised units (1 level = 0.017); a box off by its
        # scaling to the packed frame gives 0.14 to 0.28


@pytest.fixture(scope="module")
def crema(tmp_path_factory):
    root = tmp_path_factory.mktemp("crema")
    prepare_in_process("crema-d", FAKES["crema-d"](tmp_path_factory.mktemp("raw")), root)
    return root


def test_pack_only_adds_the_store_to_a_prepared_folder_without_its_source(crema, tmp_path):
    root = tmp_path / "prepared"
    shutil.copytree(crema, root)
    assert DATASETS.build("crema-d", root, **OPTIONS).spec.options["store"] == "files"  # none yet: auto reads files
    result = cli("prepare", "crema-d", "--dst", str(root), "--pack-only", "--pack-size", "40")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (root / PACKED_DIR).glob("train-*")) == [
        "train-audio-c2kd-5403430510.npy", "train-audio-fd-cmkd-7b54f0813e.npy", "train-audio-ogm-ge-4e1d267688.npy",
        "train-clips.csv", "train-frames-index.npy", "train-frames.npy"]
    frames = np.load(root / PACKED_DIR / "train-frames.npy", mmap_mode="r")
    assert frames.shape[1:] == (40, 40, 3) and frames.dtype == np.uint8
    assert DATASETS.build("crema-d", root, **OPTIONS).spec.options["store"] == "packed"
    stamp = (root / PACKED_DIR / "train-frames.npy").stat().st_mtime_ns
    assert cli("prepare", "crema-d", "--dst", str(root), "--pack-only", "--pack-size", "40").returncode == 0
    assert (root / PACKED_DIR / "train-frames.npy").stat().st_mtime_ns == stamp  # up to date: not rewritten


def test_the_packed_store_is_listed_in_the_checksums_so_verify_and_loading_catch_a_damaged_one(crema, tmp_path):
    root = tmp_path / "prepared"
    shutil.copytree(crema, root)
    content = clips_fingerprint(root)
    assert cli("prepare", "crema-d", "--dst", str(root), "--pack-only", "--pack-size", "40").returncode == 0
    assert clips_fingerprint(root) == content  # the store is derived: the prepared content (run ids) is the same
    listed = json.loads((root / "checksums.json").read_text())["files"]
    store = sorted(p.relative_to(root).as_posix() for p in (root / PACKED_DIR).iterdir())
    assert store and set(store) <= set(listed)
    assert cli("verify", str(root)).returncode == 0
    frames = root / PACKED_DIR / "train-frames.npy"
    data = bytearray(frames.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    frames.write_bytes(bytes(data))
    result = cli("verify", str(root))
    assert result.returncode == 2 and "train-frames.npy" in result.stdout + result.stderr
    with pytest.raises(UserError, match="train-frames.npy"):
        DATASETS.build("crema-d", root, **OPTIONS)


@pytest.fixture(scope="module")
def packed_root(crema, tmp_path_factory):
    from rich.console import Console

    root = tmp_path_factory.mktemp("packed") / "crema"
    shutil.copytree(crema, root)
    DATASETS.get("crema-d").meta["prepare"].pack_store(root, 40, Console(quiet=True))
    return root


@pytest.mark.parametrize("augment", [False, True])
def test_packed_batches_are_the_per_file_batches_to_float_tolerance(packed_root, augment):
    files = DATASETS.build("crema-d", packed_root, **OPTIONS, augment=augment, store="files")
    packed = DATASETS.build("crema-d", packed_root, **OPTIONS, augment=augment)
    assert packed.spec.options["store"] == "packed" and files.spec.options["store"] == "files"
    assert packed.fixed_modalities("train") == files.fixed_modalities("train")
    for split, shuffle in (("train", True), ("val", False), ("test", False)):
        for a, b in zip(files.batches(split, 4, shuffle=shuffle, seed=3), packed.batches(split, 4, shuffle=shuffle, seed=3)):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["label"], b["label"])
            assert b["visual"].shape == a["visual"].shape and b["visual"].dtype == torch.float32
            assert (a["visual"] - b["visual"]).abs().max() < 0.05  # the fake frames are flat colours
            torch.testing.assert_close(b["audio"], a["audio"], rtol=2e-3, atol=8e-3)  # float16 storage


def test_packed_batches_do_not_depend_on_workers_and_the_workers_persist(packed_root):
    here = DATASETS.build("crema-d", packed_root, **{**OPTIONS, "num_workers": 0})
    workers = DATASETS.build("crema-d", packed_root, **{**OPTIONS, "num_workers": 1})
    iterators = []
    for epoch in range(2):
        for a, b in zip(here.batches("train", 3, shuffle=True, seed=epoch), workers.batches("train", 3, shuffle=True, seed=epoch)):
            assert torch.equal(a["visual"], b["visual"]) and torch.equal(a["audio"], b["audio"])
        iterators.append(workers._loaders[("train", False)].loader._iterator)
    assert iterators[0] is not None and iterators[0] is iterators[1]  # the same worker processes in both epochs


def test_a_packed_split_pickles_without_its_memory_maps(packed_root):
    split = PackedSplit(packed_root, "train", "fd-cmkd-7b54f0813e")
    split.maps()
    copy = pickle.loads(pickle.dumps(split))
    assert copy._maps is None and copy.side == 40 and np.array_equal(copy.index, split.index)


def test_store_settings_that_cannot_be_served_are_one_line(crema, packed_root):
    with pytest.raises(UserError, match="store=packed, but .* has no packed store.*--pack-only"):
        DATASETS.build("crema-d", crema, **OPTIONS, store="packed")
    with pytest.raises(UserError, match="packed frames are 40 px, smaller than image_size 48"):
        DATASETS.build("crema-d", packed_root, **{**OPTIONS, "image_size": 48}, store="packed")
    assert DATASETS.build("crema-d", packed_root, **{**OPTIONS, "image_size": 48}).spec.options["store"] == "files"
    with pytest.raises(UserError, match="store must be one of auto, packed, files"):
        DATASETS.build("crema-d", packed_root, **OPTIONS, store="disk")


def test_pack_only_on_a_folder_that_is_not_prepared_is_one_line(tmp_path):
    result = cli("prepare", "crema-d", "--dst", str(tmp_path), "--pack-only")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a prepared crema-d folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("prepare", "crema-d", "--dst", str(tmp_path))
    assert result.returncode == 2 and "--src is needed" in result.stderr


def _filled(item: tuple[int, int], out: dict | None = None) -> dict:
    """A batch of `n` rows of `value`: into the shared buffers where given (what PersistentLoader's slots test)."""
    value, n = item
    rows = torch.empty((n, 4), dtype=torch.int64) if out is None else out["rows"][:n]
    rows.fill_(value)
    return {"rows": rows, "into": out is not None}


def test_batches_of_a_layout_come_back_through_the_loaders_shared_buffers_reused_without_overwriting_one_in_use():
    from cmkd_bench.data.loading import PersistentLoader

    loader = PersistentLoader(_filled, num_workers=2, pin_memory=False, prefetch=2)
    items = [(value, 3 if value < 13 else 2) for value in range(14)]  # 14 batches, 2 x 2 + 1 = 5 slots
    for epoch in range(2):
        got = []
        for batch in loader.iterate(items, {"rows": ((3, 4), torch.int64)}):
            assert batch["into"]
            got.append(batch["rows"].clone())  # what a caller must do before asking for the next
            slots = [slot["rows"].untyped_storage().data_ptr() for slot in next(iter(loader.slots.values()))]
            assert batch["rows"].untyped_storage().data_ptr() in slots  # a view of this process's buffer, not a copy
        assert len(slots) == 5 and [b.tolist() for b in got] == [[[v] * 4] * n for v, n in items]
    assert all(not batch["into"] for batch in loader.iterate(items[:2]))  # no layout: the fetch's own buffers
    assert all(not batch["into"] for batch in PersistentLoader(_filled, 0, False).iterate(items[:2], {"rows": ((3, 4), torch.int64)}))


def test_packed_batches_kept_past_the_workers_shared_buffers_keep_their_values(packed_root):
    here = DATASETS.build("crema-d", packed_root, **{**OPTIONS, "num_workers": 0})
    workers = DATASETS.build("crema-d", packed_root, **{**OPTIONS, "num_workers": 1})
    kept = list(workers.batches("train", 1, shuffle=True, seed=5))  # more batches than the 4 x 1 + 1 slots
    assert len(kept) > 5
    for a, b in zip(here.batches("train", 1, shuffle=True, seed=5), kept, strict=True):
        assert torch.equal(a["visual"], b["visual"]) and torch.equal(a["audio"], b["audio"])
