"""The embedded and bring-your-own datasets: determinism, structure, splits, and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd_bench.data.spec import SPLITS
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

SMALL = {"train": 80, "val": 20, "test": 20, "image_size": 16}


def synth(**options):
    return DATASETS.build("synth-av", None, **{**SMALL, **options})


def test_synth_av_is_deterministic_and_seeded():
    a, b, c = synth(), synth(), synth(data_seed=1)
    for split in SPLITS:
        for key in ("visual", "audio", "label"):
            assert torch.equal(a.splits[split][key], b.splits[split][key])
    assert not torch.equal(a.splits["train"]["visual"], c.splits["train"]["visual"])


def test_synth_av_shapes_and_spec():
    data = synth(classes=5)
    assert data.spec.modalities["visual"].shape == (3, 16, 16) and data.spec.modalities["audio"].shape == (1, 16, 16)
    assert data.splits["train"]["visual"].shape == (80, 3, 16, 16)
    assert set(data.splits["test"]["label"].tolist()) <= set(range(5)) and data.spec.num_classes == 5
    assert (data.spec.teacher_modality, data.spec.student_modality) == ("visual", "audio")
    batch = next(data.batches("train", 32, shuffle=True, seed=3))
    assert batch["visual"].shape == (32, 3, 16, 16) and torch.equal(batch["label"], data.splits["train"]["label"][batch["index"]])


def _shared_signal_strength(shared: float) -> float:
    """How much of the audio is predictable from the visual, by a least-squares fit between them."""
    data = DATASETS.build("synth-av", None, train=600, val=10, test=10, image_size=12, noise=0.5, shared=shared)
    v = data.splits["train"]["visual"].flatten(1).double()
    a = data.splits["train"]["audio"].flatten(1).double()
    v, a = v - v.mean(0), a - a.mean(0)
    fit = v @ torch.linalg.lstsq(v, a).solution
    return (fit.pow(2).sum() / a.pow(2).sum()).item()


def test_synth_av_shared_knob_controls_cross_modal_information():
    assert _shared_signal_strength(1.0) > _shared_signal_strength(0.0) + 0.05


def test_synth_av_rejects_impossible_options():
    with pytest.raises(UserError, match="shared must be in"):
        synth(shared=1.5)


@pytest.mark.parametrize("overlap", [0, 3, 10])
def test_mfh_gauss_overlap_structure(overlap):
    data = DATASETS.build("mfh-gauss", None, overlap=overlap)
    x1, x2 = data.splits["train"]["x1"], data.splits["train"]["x2"]
    assert x1.shape == (200, 25) and x2.shape == (200, 50) and len(data.splits["test"]["label"]) == 1000
    # teacher dims 0..9 carry xs[10-o:20-o]; student dims 0..9 carry xs[0:10]: they share xs[10-o:10]
    for j in range(10):
        same = torch.equal(x1[:, j], x2[:, 10 - overlap + j]) if 10 - overlap + j < 10 else False
        assert same == (j < overlap)
    labels = data.splits["train"]["label"]
    assert 0.3 < labels.float().mean() < 0.7


def test_mfh_gauss_rejects_overlap_out_of_range():
    with pytest.raises(UserError, match="overlap must be in 0..10"):
        DATASETS.build("mfh-gauss", None, overlap=11)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_paired_npz_with_split(tmp_path):
    n = 30
    split = np.array([0] * 20 + [1] * 5 + [2] * 5)
    path = write_npz(tmp_path / "d.npz", rgb=np.random.rand(n, 3, 8, 8).astype(np.float32),
                     sound=np.random.rand(n, 16).astype(np.float32), label=np.arange(n) % 3, split=split)
    data = DATASETS.build("paired-npz", path)
    assert data.spec.split_sizes == {"train": 20, "val": 5, "test": 5}
    assert (data.spec.teacher_modality, data.spec.student_modality) == ("rgb", "sound")
    assert data.spec.modalities["rgb"].backbone == "small-cnn" and data.spec.modalities["sound"].backbone == "mlp"
    assert data.spec.num_classes == 3


def test_paired_npz_without_split_is_stratified_70_15_15(tmp_path):
    labels = np.repeat(np.arange(4), 40)
    path = write_npz(tmp_path / "d.npz", a=np.random.rand(160, 5), b=np.random.rand(160, 12, 12), label=labels)
    data = DATASETS.build("paired-npz", path)
    assert data.spec.split_sizes == {"train": 112, "val": 24, "test": 24}
    for split, per_class in (("train", 28), ("val", 6), ("test", 6)):
        assert torch.bincount(data.splits[split]["label"]).tolist() == [per_class] * 4
    assert data.spec.modalities["b"].shape == (1, 12, 12)  # a 2-D sample is a one-channel image
    again = DATASETS.build("paired-npz", path)
    assert torch.equal(again.splits["val"]["a"], data.splits["val"]["a"])


@pytest.mark.parametrize("arrays, message", [
    ({"a": np.zeros((4, 2)), "b": np.zeros((4, 2))}, "no 'label' array"),
    ({"a": np.zeros((4, 2)), "label": np.arange(4)}, "needs two"),
    ({"a": np.zeros((4, 2)), "b": np.zeros((3, 2)), "label": np.arange(4)}, "array 'b' has 3 samples"),
    ({"a": np.zeros((4, 2)), "b": np.zeros((4, 2)), "label": np.zeros(4)}, "1-D integer array"),
    ({"a": np.zeros((4, 2)), "b": np.zeros((4, 2)), "label": np.array([0, 1, -1, 0])}, "class ids >= 0"),
    ({"a": np.full((4, 2), np.nan), "b": np.zeros((4, 2)), "label": np.arange(4)}, "NaN or infinite"),
    ({"a": np.zeros((4, 2)), "b": np.zeros((4, 2)), "label": np.arange(4), "split": np.array([0, 1, 1, 3])}, r"each 0 \(train\)"),
    ({"a": np.zeros((4, 2)), "b": np.zeros((4, 2)), "label": np.arange(4), "split": np.array([0, 0, 2, 2])}, "no val samples"),
    ({"a": np.zeros((4,)), "b": np.zeros((4, 2)), "label": np.arange(4)}, "use N x D"),
    ({"a": np.array(["x"] * 4), "b": np.zeros((4, 2)), "label": np.arange(4)}, "must be numeric"),
])
def test_paired_npz_says_exactly_what_is_wrong(tmp_path, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message):
        DATASETS.build("paired-npz", path)


def test_paired_npz_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"definitely not a zip")
    with pytest.raises(UserError, match="is not an .npz file") as refused:
        DATASETS.build("paired-npz", garbage)
    assert "pickle" not in str(refused.value)  # numpy's own message blames allow_pickle for any non-npz file
    with pytest.raises(UserError, match="is a folder"):
        DATASETS.build("paired-npz", tmp_path)
