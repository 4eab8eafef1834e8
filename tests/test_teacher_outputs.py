"""The per-run cache of a frozen teacher's outputs (cmkd_bench/training/teacher_outputs.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cmkd_bench.catalog import load_all
from cmkd_bench.data.spec import Recipe
from cmkd_bench.datasets._av_common import AudioRecipe, ClipReader, VisualRecipe
from cmkd_bench.registry import DATASETS, METHODS
from cmkd_bench.training.engine import Fit
from cmkd_bench.training.runner import RunRequest, build_model, execute, resolve_run
from cmkd_bench.training.teacher_outputs import TeacherOutputs, plan

TINY = {"train": 64, "val": 32, "test": 32, "image_size": 16}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    load_all()
    data = DATASETS.build("synth-av", None, **TINY)
    spec = data.spec
    teacher = build_model(spec.modalities[spec.teacher_modality].backbone, data, spec.teacher_modality, 0, CPU).eval()
    student = build_model(spec.modalities[spec.student_modality].backbone, data, spec.student_modality, 1, CPU)
    return data, teacher, student


def live(teacher, data, batch):
    with torch.no_grad():
        return teacher(batch[data.spec.teacher_modality])


def test_cached_outputs_equal_the_teachers_forward_on_shuffled_batches(setup):
    data, teacher, _ = setup
    stages = [f"stage:{name}" for name in teacher.info.stage_names]
    reads = frozenset({"logits", "feature", "feature_post", *stages})
    cache = TeacherOutputs.compute(teacher, data, "train", data.spec.teacher_modality, reads, CPU, batch_size=24)
    assert cache.fields["logits"].shape == (64, data.spec.num_classes)
    assert cache.nbytes == sum(t.numel() * 4 for t in cache.fields.values())
    batch = next(iter(data.batches("train", 16, shuffle=True, seed=7)))
    got, want = cache.gather(batch["index"]), live(teacher, data, batch)
    for name in ("logits", "feature", "feature_post"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6)
    assert list(got.stages) == teacher.info.stage_names
    for name, value in want.stages.items():
        torch.testing.assert_close(got.stages[name], value, rtol=1e-5, atol=1e-6)
    assert got.decoder is None


# every method that declares what it reads; mgdfr's head is set by hand (its prepare trains a partner)
DECLARED = ["kd", "dkd", "dist", "fitnet", "feat", "fd", "rkd", "crd", "cwd", "at", "pkd", "mgdfr", "mgdfr-ridge"]


@pytest.mark.parametrize("name", DECLARED)
def test_a_methods_losses_are_the_same_with_cached_teacher_outputs(setup, name):
    data, teacher, student = setup
    torch.manual_seed(0)
    options = {"cwd": {"feature": "last"}}.get(name, {})  # cwd's logits form is for maps (segmentation)
    method = METHODS.build(name, student.info, teacher.info, data.spec, **options)
    reads = method.teacher_reads()
    assert reads, name
    if name == "mgdfr":
        method.head = teacher.net.get_submodule(teacher.head_module)
    if name == "mgdfr-ridge":
        method.ranked = True
    if name == "crd":
        method.prepare(teacher, data, "cpu", None)
    cache = TeacherOutputs.compute(teacher, data, "train", data.spec.teacher_modality, reads, CPU)
    batch = next(iter(data.batches("train", 16, shuffle=True, seed=3)))
    s_out = student(batch[data.spec.student_modality])
    twin = copy.deepcopy(method)  # crd updates its memory bank in forward
    torch.manual_seed(5)  # crd draws its negatives
    want = method(s_out, live(teacher, data, batch), batch)
    torch.manual_seed(5)
    got = twin(s_out, cache.gather(batch["index"]), batch)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


def fit(data, method_name: str, cache: bool, epochs: int = 2):
    spec = data.spec
    teacher = build_model(spec.modalities[spec.teacher_modality].backbone, data, spec.teacher_modality, 0, CPU).eval()
    student = build_model(spec.modalities[spec.student_modality].backbone, data, spec.student_modality, 1, CPU)
    torch.manual_seed(1)
    method = METHODS.build(method_name, student.info, teacher.info, spec)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    result = Fit(student=student, method=method, data=data, student_modality=spec.student_modality,
                 recipe=Recipe(epochs=epochs, batch_size=16, lr=0.05), seed=0, device=CPU, teacher=teacher,
                 teacher_modality=spec.teacher_modality, cache_teacher=cache).run()
    return result, len(calls)


@pytest.mark.parametrize("name", ["kd", "fitnet"])
def test_a_short_run_with_the_cache_gives_the_uncached_runs_metrics_without_teacher_forwards(setup, name):
    data = setup[0]
    cached, cached_calls = fit(data, name, cache=True)
    uncached, uncached_calls = fit(data, name, cache=False)
    steps = data.num_batches("train", 16, shuffle=True) * 2
    assert cached.teacher_outputs == "cached" and uncached.teacher_outputs == "live: the cache was turned off"
    assert uncached_calls == steps
    assert cached_calls == 1  # one pass over the 64 training samples (one batch of 256)
    assert cached.val_best == pytest.approx(uncached.val_best, abs=1e-9)
    assert cached.test == pytest.approx(uncached.test, abs=1e-9)
    for a, b in zip(cached.history, uncached.history):
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-4)


def test_methods_that_train_or_need_the_live_teacher_and_augmented_inputs_are_not_cached(setup):
    data, teacher, student = setup
    c2kd = METHODS.build("c2kd", student.info, teacher.info, data.spec)
    assert plan(c2kd, teacher, data, data.spec.teacher_modality, CPU).reason == "live: the method trains the teacher"
    no_kd = METHODS.build("no-kd", student.info, teacher.info, data.spec)
    assert not plan(no_kd, teacher, data, data.spec.teacher_modality, CPU).cached
    kd = METHODS.build("kd", student.info, teacher.info, data.spec)
    assert plan(kd, teacher, data, data.spec.teacher_modality, CPU).cached
    augmented = DATASETS.build("synth-rgbd", None, train=8, val=4, test=4, augment=True)
    assert augmented.fixed_modalities("train") == frozenset()
    assert DATASETS.build("synth-rgbd", None, train=8, val=4, test=4).fixed_modalities("train") == {"rgb", "depth"}


def test_c2kd_runs_with_the_teachers_live_forward(tmp_path):
    record = execute(resolve_run(RunRequest(method="c2kd", dataset="synth-av", epochs=1, device="cpu", out=str(tmp_path),
                                            sets=tuple(f"{k}={v}" for k, v in TINY.items()))))
    assert record["teacher_outputs"] == "live: the method trains the teacher"


def clip_reader(augment: bool, window: str, train: str) -> ClipReader:
    audio = AudioRecipe(rate=16000, transform="mel", n_fft=512, hop=160, seconds=1.0, window=window, double_until=2.0)
    return ClipReader(root=None, split="train", names=[], labels=np.zeros(0), frame_counts=np.zeros(0),
                      segments=np.zeros((0, 2)), stored_rate=16000, audio=audio, visual=VisualRecipe(1, train, "first"),
                      frames=1, image_size=16, augment=augment)


def test_video_readers_declare_which_modalities_are_decoded_the_same_every_epoch():
    assert clip_reader(False, "start", "first").fixed_modalities == {"audio", "visual"}
    assert clip_reader(True, "start", "first").fixed_modalities == {"audio"}
    assert clip_reader(False, "start", "segments").fixed_modalities == {"audio"}
    assert clip_reader(True, "random", "first").fixed_modalities == frozenset()


def test_the_cache_serves_a_dense_teachers_native_resolution_logits_as_the_live_forward_gives_them():
    """cwd and segmentation dist read `logits_native` (the head's own resolution); the cache holds them."""
    from cmkd_bench.models.backbones import build_backbone
    from cmkd_bench.training.teacher_outputs import TeacherOutputs

    data = DATASETS.build("synth-rgbd", None, train=8, val=4, test=4)
    spec = data.spec
    torch.manual_seed(0)
    teacher = build_backbone("small-seg", spec, spec.teacher_modality).eval()
    cached = TeacherOutputs.compute(teacher, data, "train", spec.teacher_modality, frozenset({"logits_native"}), CPU)
    batch = next(data.batches("train", 4, shuffle=True, seed=3))
    with torch.no_grad():
        live = teacher(batch[spec.teacher_modality]).logits_native
    served = cached.gather(batch["index"]).logits_native
    assert live.shape[-1] < spec.modality(spec.teacher_modality).shape[-1]  # below the input's size
    assert torch.equal(served, live)
