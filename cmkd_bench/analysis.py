"""The FD-CMKD paper's analyses, run on this suite's teachers and run records.

    cmkd-bench analyze freq-similarity --dataset D   the motivation figure: mean cosine similarity
        across modalities of the two unimodal teachers' pooled features, raw, low band and high band
        (the paper reports low ~0.91, raw ~0.84, high ~0 on CREMA-D); --run RUN instead compares a
        run's teacher with its distilled student
    cmkd-bench analyze tsne RUN [RUN]                 t-SNE of teacher and student features of a run
        (or two, side by side), coloured by class, marked by modality (the paper's Figure 4)

Teachers come from the runner's teacher cache (trained there if missing, exactly as a run would);
students from the weights a run saves (`<run_dir>/student.pt`) or a path given with
--student-weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import PairedData
from .engine import resolve_device
from .errors import UserError
from .files import file_stem, load_weights, write_json_atomic
from .losses import frequency_bands, low_band_cut
from .models import FeatureModel
from .plots import pyplot, save_figure
from .records import data_options, read_record, record_direction
from .runner import ResolvedRun, RunCallbacks, RunRequest, build_data, build_model, obtain_teacher, resolve_run, \
    teacher_key

if TYPE_CHECKING:  # matplotlib itself is imported by `plots.pyplot()`, after choosing the Agg backend
    from matplotlib.axes import Axes

BANDS = ("raw", "low", "high")


# ---------------------------------------------------------------------------------------------
# Features


def pooled_features(model: FeatureModel, data: PairedData, split: str, modality: str, device: torch.device,
                    limit: int | None = None) -> tuple[Tensor, Tensor]:
    """(features N x D, labels N) of a model on a split: the pooled pre-activation feature."""
    features, labels = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in data.batches(split, 256, shuffle=False, device=device):
            features.append(model(batch[modality]).feature.float().cpu())
            labels.append(batch["label"].cpu())
            if limit is not None and sum(len(f) for f in features) >= limit:
                break
    model.train(was_training)
    return torch.cat(features)[:limit], torch.cat(labels)[:limit]


# ---------------------------------------------------------------------------------------------
# Frequency similarity


@dataclass
class BandSimilarity:
    band: str
    mean: float
    std: float


@dataclass
class FreqSimilarity:
    dataset: str
    modalities: tuple[str, str]
    backbones: tuple[str, str]
    feature_dim: int
    split: float
    low_bins: tuple[int, int]  # rfft bins of the low band (DC excluded)
    high_bins: tuple[int, int]
    on: str
    samples: int
    bands: list[BandSimilarity]
    compared: str  # "teachers": the dataset's two teachers; "run": a run's teacher and student
    sources: tuple[str, ...]  # the teachers' cache keys, or the run id

    def value(self, band: str) -> float:
        return next(b.mean for b in self.bands if b.band == band)


def band_similarities(a: Tensor, b: Tensor, split: float) -> dict[str, Tensor]:
    """Per-sample cosine similarity of a and b (N x D, paired rows): raw, low band and high band.

    The bands are fd's (cmkd_bench.losses): rfft along the feature, bins 1..cut (low) and cut+1..D/2 (high).
    """
    cut = checked_cut(a.shape[1], split)
    low_a, high_a = frequency_bands(a.double(), cut)
    low_b, high_b = frequency_bands(b.double(), cut)
    return {"raw": F.cosine_similarity(a.double(), b.double(), dim=1),
            "low": F.cosine_similarity(low_a, low_b, dim=1),
            "high": F.cosine_similarity(high_a, high_b, dim=1)}


def checked_cut(dim: int, split: float) -> int:
    if not 0 < split < 1:
        raise UserError(f"--split must be in (0, 1), got {split}")
    cut = low_band_cut(dim, split)
    if not 1 <= cut < dim // 2:
        raise UserError(f"a feature of dimension {dim} has no low and high band at split {split}; "
                        f"choose a split between {1 / (dim // 2):.3g} and {1 - 1 / (dim // 2):.3g}")
    return cut


@dataclass
class TeacherRequest:
    """What a run of the suite would use to obtain a teacher: same values, same cached teacher."""

    dataset: str
    seed: int = 0
    sets: tuple[str, ...] = ()
    epochs: int | None = None
    data_root: str | None = None
    out: str = "runs"
    teacher_cache: str | None = None
    device: str = "auto"


def trained_teacher(request: TeacherRequest, teacher_modality: str, other_modality: str,
                    backbone: str | None,
                    progress: RunCallbacks | None = None) -> tuple[FeatureModel, ResolvedRun, str]:
    """(teacher model, resolved run, teacher backbone): through the runner's teacher cache, trained if missing.

    A no-kd run request in the direction teacher_modality -> other_modality names exactly the
    teacher such runs distil from, so the analysis sees the teachers the tables were made with.
    """
    resolved = resolve_run(RunRequest(method="no-kd", dataset=request.dataset, teacher_modality=teacher_modality,
                                      student_modality=other_modality, teacher_backbone=backbone, seed=request.seed,
                                      sets=request.sets, epochs=request.epochs, data_root=request.data_root,
                                      out=request.out, teacher_cache=request.teacher_cache, device=request.device))
    config = resolved.config
    model = build_model(config.teacher_backbone, resolved.data, config.teacher_modality, config.seed, resolved.device)
    return model, resolved, config.teacher_backbone


def freq_similarity(request: TeacherRequest, modalities: tuple[str, str] | None = None,
                    backbones: dict[str, str] | None = None, split: float = 0.5, on: str = "test",
                    echo: Callable[[str], None] = print) -> FreqSimilarity:
    backbones = backbones or {}
    first, second = modalities or _default_modalities(request)
    models = {}
    for modality, other in ((first, second), (second, first)):
        models[modality] = trained_teacher(request, modality, other, backbones.get(modality))
    dims = {m: model.info.feature_dim for m, (model, _, _) in models.items()}
    if dims[first] != dims[second]:
        raise UserError(f"the teachers' features differ in dimension ({first} {models[first][2]}: {dims[first]}, "
                        f"{second} {models[second][2]}: {dims[second]}); freq-similarity compares features "
                        "element by element, so give both teachers one backbone (--teacher MODALITY=BACKBONE)")
    cut = checked_cut(dims[first], split)  # before any training: a bad split fails at once
    keys = []
    for modality, (model, resolved, _) in models.items():
        obtain_teacher(resolved, model, RunCallbacks(on_message=echo, on_phase=lambda label, epochs, steps: echo(
            f"training {label} teacher ({epochs} epochs; cached for runs and analyses)")))
        keys.append(teacher_key(resolved.config))
    data, device = models[first][1].data, models[first][1].device
    check_on(on)
    feature_a, _ = pooled_features(models[first][0], data, on, first, device)
    feature_b, _ = pooled_features(models[second][0], data, on, second, device)
    per_sample = band_similarities(feature_a, feature_b, split)
    bands = [BandSimilarity(band, float(per_sample[band].mean()), float(per_sample[band].std()))
             for band in BANDS]
    return FreqSimilarity(dataset=data.spec.name, modalities=(first, second),
                          backbones=(models[first][2], models[second][2]), feature_dim=dims[first], split=split,
                          low_bins=(1, cut), high_bins=(cut + 1, dims[first] // 2), on=on,
                          samples=len(feature_a), bands=bands, compared="teachers", sources=tuple(keys))


def run_freq_similarity(run: str | Path, split: float = 0.5, on: str = "test", student_weights: str | None = None,
                        data_root: str | None = None, device_name: str = "auto") -> FreqSimilarity:
    """The same measure between a run's teacher and its distilled student (what the method aligned)."""
    features = run_features(run, student_weights, on, samples=None, data_root=data_root, device_name=device_name)
    record, dim = features.record, features.teacher.shape[1]
    cut = checked_cut(dim, split)
    per_sample = band_similarities(features.teacher, features.student, split)
    bands = [BandSimilarity(band, float(per_sample[band].mean()), float(per_sample[band].std())) for band in BANDS]
    modalities = (str(record["teacher_modality"]), str(record["student_modality"]))
    return FreqSimilarity(dataset=str(record["dataset"]), modalities=modalities,
                          backbones=(record["teacher_backbone"], record["student_backbone"]), feature_dim=dim,
                          split=split, low_bins=(1, cut), high_bins=(cut + 1, dim // 2), on=on,
                          samples=len(features.labels), bands=bands, compared="run", sources=(str(record["run_id"]),))


def _default_modalities(request: TeacherRequest) -> tuple[str, str]:
    spec = resolve_run(RunRequest(method="no-kd", dataset=request.dataset, sets=request.sets,
                                  data_root=request.data_root, out=request.out)).data.spec
    return spec.teacher_modality, spec.student_modality


def check_on(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise UserError(f"--on {split!r}: choose train, val or test")


def freq_similarity_table(result: FreqSimilarity) -> str:
    first, second = result.modalities
    models = (f"{first} teacher vs {second} student of run {result.sources[0]}" if result.compared == "run"
              else f"{first} teacher vs {second} teacher")
    lines = [f"{result.dataset}: cosine similarity of pooled features, {models} ({result.backbones[0]}, "
             f"D={result.feature_dim}), {result.on} split (n={result.samples}); split {result.split}: "
             f"low = rfft bins {result.low_bins[0]}..{result.low_bins[1]}, "
             f"high = {result.high_bins[0]}..{result.high_bins[1]}",
             f"{'band':<6} {'mean':>7} {'std':>7}"]
    lines += [f"{b.band:<6} {b.mean:>7.3f} {b.std:>7.3f}" for b in result.bands]
    return "\n".join(lines)


def plot_freq_similarity(result: FreqSimilarity, directory: Path, stem: str | None = None) -> list[Path]:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 3.2))
    axis.bar(BANDS, [b.mean for b in result.bands], yerr=[b.std for b in result.bands], capsize=3,
             color=["#8172b2", "#4c72b0", "#dd8452"])
    axis.axhline(0.0, color="k", linewidth=0.6)
    for position, band in enumerate(result.bands):
        above = band.mean >= 0  # the label goes past the error bar, away from zero
        axis.annotate(f"{band.mean:.2f}", (position, band.mean + (band.std if above else -band.std)),
                      ha="center", va="bottom" if above else "top", fontsize=8)
    axis.set_ylim(min(-0.2, min(b.mean - b.std for b in result.bands) - 0.05), 1.1)
    axis.set_ylabel("cosine similarity across modalities")
    models = "teacher vs student" if result.compared == "run" else "teachers"
    axis.set_title(f"{result.dataset}: {result.modalities[0]} vs {result.modalities[1]} {models} "
                   f"(split {result.split})", fontsize=9)
    return save_figure(figure, directory, file_stem(stem or f"freq-similarity-{result.dataset}"))


def write_freq_similarity(result: FreqSimilarity, directory: Path) -> list[Path]:
    """The result as JSON and its plot (PNG and SVG) in `directory`; returns the files written."""
    stem = f"freq-similarity-{result.sources[0]}" if result.compared == "run" else f"freq-similarity-{result.dataset}"
    write_json_atomic(asdict(result), directory / f"{stem}.json")
    return [directory / f"{stem}.json", *plot_freq_similarity(result, directory, stem)]


# ---------------------------------------------------------------------------------------------
# t-SNE of a run's teacher and student features


@dataclass
class RunFeatures:
    record: dict[str, Any]
    teacher: Tensor  # N x D
    student: Tensor  # N x D
    labels: Tensor  # N


def run_record(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A run's record and folder, from the folder or its result.json."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    if not (run_dir / "result.json").is_file():
        raise UserError(f"{path}: no result.json; pass a run folder (OUT/<run_id>) or its result.json")
    return read_record(run_dir / "result.json"), run_dir


def teacher_weights_path(record: dict[str, Any], run_dir: Path) -> Path:
    """Where the run's teacher weights are: fine-tuned by the method, or from the teacher cache."""
    teacher = record.get("teacher") or {}
    # the files in and beside the folder given first: a copied runs folder must not read the original's
    if teacher.get("finetuned_checkpoint"):
        candidates = [str(run_dir / "teacher_finetuned.pt"), teacher["finetuned_checkpoint"]]
    else:  # a runs folder moved elsewhere keeps its teachers/ beside the runs
        candidates = [str(run_dir.parent / "teachers" / str(teacher["key"]) / "teacher.pt") if teacher.get("key")
                      else None, teacher.get("checkpoint")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise UserError(f"run {record['run_id']}: teacher weights not found (looked for "
                    f"{', '.join(str(c) for c in candidates if c)}); keep the runs folder's teachers/ beside it")


def student_weights_path(record: dict[str, Any], run_dir: Path, given: str | None) -> Path:
    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"--student-weights {given!r} does not exist; pass the path of a .pt state_dict")
        return Path(given)
    for candidate in (run_dir / "student.pt", record.get("student_checkpoint")):  # the copy given, first
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise UserError(f"run {record['run_id']} has no saved student weights ({run_dir / 'student.pt'}); "
                    "rerun it with --force to save them, or pass --student-weights PATH")


def run_features(run: str | Path, student_weights: str | None = None, split: str = "test", samples: int | None = 500,
                 data_root: str | None = None, device_name: str = "auto") -> RunFeatures:
    record, run_dir = run_record(run)
    device = resolve_device(device_name)
    check_on(split)
    data = build_data(record["dataset"], data_root, dict(data_options(record)))
    features = {}
    for role, weights in (("teacher", teacher_weights_path(record, run_dir)),
                          ("student", student_weights_path(record, run_dir, student_weights))):
        modality, backbone = record[f"{role}_modality"], record[f"{role}_backbone"]
        model = build_model(backbone, data, modality, int(record["seed"]), device)
        load_weights(model, weights, device, f"{role} weights file")
        features[role], labels = pooled_features(model, data, split, modality, device, limit=samples)
    if features["teacher"].shape[1] != features["student"].shape[1]:
        raise UserError(f"run {record['run_id']}: teacher and student features differ in dimension "
                        f"({features['teacher'].shape[1]} and {features['student'].shape[1]}); "
                        "one t-SNE of both needs one dimension")
    return RunFeatures(record, features["teacher"], features["student"], labels)


def tsne_embedding(features: RunFeatures, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of teacher and student features together: rows 0..N-1 teacher, N..2N-1 student."""
    from sklearn.manifold import TSNE  # scikit-learn takes seconds to import; only `analyze tsne` needs it

    points = np.concatenate([features.teacher.numpy(), features.student.numpy()]).astype(np.float64)
    perplexity = min(perplexity, (len(points) - 1) / 3)  # t-SNE needs perplexity < n_samples
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def plot_tsne(runs: Sequence[RunFeatures], embeddings: Sequence[np.ndarray], directory: Path) -> list[Path]:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.8), squeeze=False)
    for axis, features, embedding in zip(axes[0], runs, embeddings):
        _draw_tsne(axis, features, embedding, plt)
    figure.tight_layout()
    stem = "tsne-" + "-vs-".join(file_stem(f.record["run_id"]) for f in runs)
    return save_figure(figure, directory, stem)


def _draw_tsne(axis: Axes, features: RunFeatures, embedding: np.ndarray, plt: ModuleType) -> None:
    from matplotlib.lines import Line2D  # (matplotlib is loaded: `plt` is pyplot)

    record, n = features.record, len(features.labels)
    colours = plt.get_cmap("tab10" if int(features.labels.max()) < 10 else "tab20")
    labels = features.labels.numpy()

    handles = []
    for role, rows, marker in (("teacher", slice(0, n), "o"), ("student", slice(n, 2 * n), "^")):
        axis.scatter(embedding[rows, 0], embedding[rows, 1], c=colours(labels % colours.N), marker=marker,
                     s=14, alpha=0.75, edgecolors="none")
        # Grey legend markers: the colours are the classes, the legend only tells the modalities apart.
        handles.append(Line2D([], [], marker=marker, linestyle="", color="#555555",
                              label=f"{role} ({record[f'{role}_modality']})"))
    axis.set_title(f"{record['method']} · {record['dataset']} · {record_direction(record)} · seed {record['seed']}",
                   fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(handles=handles, fontsize=7, loc="best", title="marker: modality, colour: class", title_fontsize=7)
