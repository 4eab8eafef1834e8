"""The paper's analyses on tiny data: band similarities (math and end to end through the teacher
cache), the one-line refusal of teachers with different feature sizes, and t-SNE of a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from cmkd_bench.errors import UserError
from cmkd_bench.reporting.analysis import (SimilaritySettings, TeacherRequest, band_similarities, freq_similarity,
                                           plot_tsne, run_features, run_freq_similarity, tsne_embedding)
from cmkd_bench.training.runner import RunRequest, build_model, execute, resolve_run

TINY = ("train=64", "val=32", "test=32", "image_size=16")


def band_signal(generator: torch.Generator, n: int, dim: int, bins: range) -> torch.Tensor:
    """Random real signals whose rfft is non-zero only on `bins`."""
    spectrum = torch.zeros(n, dim // 2 + 1, dtype=torch.complex128)
    for b in bins:
        spectrum[:, b] = torch.complex(torch.randn(n, generator=generator, dtype=torch.float64),
                                       torch.randn(n, generator=generator, dtype=torch.float64))
    return torch.fft.irfft(spectrum, n=dim)


def test_band_similarity_separates_a_shared_low_band_from_independent_high_bands() -> None:
    generator = torch.Generator().manual_seed(0)
    n, dim, cut = 400, 64, 16  # split 0.5 of D/2 = 32 bins
    shared_low = band_signal(generator, n, dim, range(1, cut + 1))
    a = shared_low + band_signal(generator, n, dim, range(cut + 1, dim // 2 + 1)) + 3.0  # + a mean (DC)
    b = shared_low + band_signal(generator, n, dim, range(cut + 1, dim // 2 + 1)) - 1.0
    similarity = band_similarities(a, b, split=0.5)
    assert similarity["low"] == pytest.approx(torch.ones(n, dtype=torch.float64), abs=1e-9)
    assert abs(similarity["high"].mean().item()) < 0.05
    assert similarity["raw"] == pytest.approx(F.cosine_similarity(a, b, dim=1))
    with pytest.raises(UserError, match="split"):
        band_similarities(a, b, split=1.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis") / "runs"


def test_freq_similarity_uses_the_cached_teachers_and_their_features(runs: Path) -> None:
    request = TeacherRequest(dataset="synth-av", sets=TINY, epochs=1, out=str(runs), device="cpu")
    result = freq_similarity(request, settings=SimilaritySettings(split=0.5), echo=lambda text: None)
    assert result.modalities == ("visual", "audio") and result.feature_dim == 64
    assert result.cut == 16 and result.samples == 32 and result.conventions == ("include", "exclude")
    assert len(list((runs / "teachers").glob("*/teacher.json"))) == 2  # trained once, cached for runs
    # Recompute the raw similarity from the cached weights, outside the analysis.
    features = []
    for teacher, student in (("visual", "audio"), ("audio", "visual")):
        prepared = resolve_run(RunRequest(method="no-kd", dataset="synth-av", teacher_modality=teacher,
                                      student_modality=student, epochs=1, sets=TINY, out=str(runs), device="cpu"))
        model = build_model("small-cnn", prepared.data, teacher, 0, prepared.device)
        key = next(p for p in (runs / "teachers").iterdir() if f"-{teacher}-" in p.name)
        model.load_state_dict(torch.load(key / "teacher.pt", weights_only=True))
        model.eval()
        with torch.no_grad():
            features.append(model(prepared.data.splits["test"][teacher]).feature_post)  # the notebook's feature
    raw = F.cosine_similarity(features[0].double(), features[1].double(), dim=1).mean().item()
    assert result.value("raw") == pytest.approx(raw, abs=1e-5)
    assert result.value("raw", "exclude") == result.value("raw", "include")
    share = (64 * features[0].double().mean(dim=1) ** 2 / (features[0].double() ** 2).sum(dim=1)).mean().item()
    assert result.dc_share["visual"][0] == pytest.approx(share, abs=1e-5)
    assert all(-1.0 <= row.mean <= 1.0 for row in result.rows) and len(result.rows) == 3 * 2 * 3


def test_freq_similarity_command_writes_table_and_plot(runs: Path, tmp_path: Path, capsys) -> None:
    from cmkd_bench.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["analyze", "freq-similarity", "--dataset", "synth-av", "--epochs", "1", "--out", str(runs),
              "--device", "cpu", "--output-dir", str(tmp_path), *[arg for s in TINY for arg in ("--set", s)]])
    out = capsys.readouterr().out
    assert stopped.value.code == 0
    assert "reused" in out and not any(line.startswith("training ") for line in out.splitlines())  # cached above
    saved = json.loads((tmp_path / "freq-similarity-synth-av.json").read_text())
    assert [row["band"] for row in saved["rows"][:3]] == ["raw", "low", "high"]
    assert saved["rows"][0]["control"] == "none" and saved["rows"][0]["convention"] == "include"
    low = saved["rows"][1]
    assert f"notebook convention (DC kept, bins 0..K)" in out and f"{low['mean']:.3f} ± {low['std']:.3f}" in out
    assert (tmp_path / "freq-similarity-synth-av.png").read_bytes().startswith(b"\x89PNG")


def test_teachers_of_different_feature_sizes_are_refused_before_training(tmp_path: Path, capsys) -> None:
    from cmkd_bench.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["analyze", "freq-similarity", "--dataset", "synth-av", "--teacher", "audio=mlp", "--epochs", "1",
              "--out", str(tmp_path / "runs"), "--device", "cpu", *[arg for s in TINY for arg in ("--set", s)]])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "differ in dimension (visual small-cnn: 64, audio mlp: 256)" in err
    assert not (tmp_path / "runs" / "teachers").exists() or not any((tmp_path / "runs" / "teachers").rglob("*.pt"))


@pytest.fixture(scope="module")
def kd_run(runs: Path) -> Path:
    record = execute(resolve_run(RunRequest(method="kd", dataset="synth-av", epochs=1, sets=TINY, out=str(runs),
                                        device="cpu")))
    return runs / record["run_id"]


def test_freq_similarity_of_a_run_compares_its_teacher_and_student(kd_run: Path) -> None:
    result = run_freq_similarity(kd_run, SimilaritySettings(split=0.25, feature="pre"), device_name="cpu")
    features = run_features(kd_run, device_name="cpu", samples=None)
    assert result.compared == "run" and result.sources == (kd_run.name,) and result.cut == 8
    expected = F.cosine_similarity(features.teacher.double(), features.student.double(), dim=1).mean().item()
    assert result.value("raw") == pytest.approx(expected, abs=1e-9) and result.samples == 32


def test_tsne_of_a_run_uses_its_saved_or_given_student(kd_run: Path, tmp_path: Path) -> None:
    run_dir = kd_run
    saved = run_features(run_dir, device_name="cpu", samples=20)
    assert saved.teacher.shape == saved.student.shape == (20, 64) and saved.labels.shape == (20,)
    other = tmp_path / "other_student.pt"
    torch.save(build_model("small-cnn", resolve_run(RunRequest(method="kd", dataset="synth-av", sets=TINY)).data,
                           "audio", 7, torch.device("cpu")).state_dict(), other)
    given = run_features(run_dir, student_weights=str(other), device_name="cpu", samples=20)
    assert torch.equal(given.teacher, saved.teacher) and not torch.equal(given.student, saved.student)
    with threadpool_limits(limits=1):  # t-SNE's OpenMP threads crawl on a shared 2-core machine
        embeddings = [tsne_embedding(features, perplexity=5) for features in (saved, given)]
    assert embeddings[0].shape == (40, 2)
    written = plot_tsne([saved, given], embeddings, tmp_path)
    assert [p.suffix for p in written] == [".png", ".svg"] and "-vs-" in written[0].name
    copy = shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name)
    (copy / "student.pt").unlink()
    record = json.loads((copy / "result.json").read_text())
    record.pop("student_checkpoint")  # (it names the original folder's file)
    (copy / "result.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="no saved student weights"):
        run_features(copy, device_name="cpu")
