"""The FD-CMKD paper's analyses, run on this suite's teachers and run records.

    cmkd-bench analyze freq-similarity --dataset D   the motivation figure: mean cosine similarity
        across modalities of the two unimodal teachers' pooled features, raw, low band and high band
        (the paper reports low ~0.91, raw ~0.84, high ~0 on CREMA-D), under the reference notebook's
        convention (DC bin kept in the low band) and the training loss's (DC dropped), with the DC
        share of each feature's energy and two controls (cmkd_bench.reporting.freqsim documents all of it
        against the reference code); --run RUN instead compares a run's teacher with its student
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

from ..artefacts.files import file_stem, load_weights, write_json_atomic
from ..artefacts.records import data_options, read_record, record_direction
from ..data.spec import PairedData
from ..errors import UserError
from ..losses import low_band_cut
from ..models.features import FeatureModel
from ..training.engine import resolve_device
from ..training.runner import (ResolvedRun, RunCallbacks, RunRequest, build_data, build_model, obtain_teacher,
                               resolve_run, teacher_key)
from .freqsim import BANDS, CONTROLS, CONVENTIONS, BandRow, band_cosines, dc_share, similarity_rows
from .plots import pyplot, save_figure

if TYPE_CHECKING:  # matplotlib itself is imported by `plots.pyplot()`, after choosing the Agg backend
    from matplotlib.axes import Axes


# ---------------------------------------------------------------------------------------------
# Features


def pooled_features(model: FeatureModel, data: PairedData, split: str, modality: str, device: torch.device,
                    limit: int | None = None, attr: str = "feature") -> tuple[Tensor, Tensor]:
    """(features N x D, labels N) of a model on a split: a pooled feature of its ModelOutput
    (`feature`, the pre-activation one, or `feature_post`)."""
    features, labels = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in data.batches(split, 256, shuffle=False, device=device):
            features.append(getattr(model(batch[modality]), attr).float().cpu())
            labels.append(batch["label"].cpu())
            if limit is not None and sum(len(f) for f in features) >= limit:
                break
    model.train(was_training)
    return torch.cat(features)[:limit], torch.cat(labels)[:limit]


# ---------------------------------------------------------------------------------------------
# Frequency similarity


FEATURES = {"post": "feature_post", "pre": "feature"}  # as fd's `feature` option
DC_OPTIONS = {"include": ("include",), "exclude": ("exclude",), "both": ("include", "exclude")}


@dataclass
class FreqSimilarity:
    dataset: str
    modalities: tuple[str, str]
    backbones: tuple[str, str]
    feature_dim: int
    split: float
    cut: int  # K: the low band is rfft bins 1..K (training loss) or 0..K (notebook); high is K+1..D//2
    feature: str  # "post" (the notebook's and fd's) or "pre"
    on: str
    samples: int
    conventions: tuple[str, ...]  # "include" (DC kept) and/or "exclude"
    rows: list[BandRow]  # per control x convention x band
    dc_share: dict[str, tuple[float, float]]  # per compared model (its modality): mean, std over samples
    control_seed: int
    compared: str  # "teachers": the dataset's two teachers; "run": a run's teacher and student
    sources: tuple[str, ...]  # the teachers' cache keys, or the run id

    def value(self, band: str, convention: str | None = None, control: str = "none") -> float:
        convention = convention or self.conventions[0]
        return next(r.mean for r in self.rows
                    if (r.band, r.convention, r.control) == (band, convention, control))


def band_similarities(a: Tensor, b: Tensor, split: float, dc: str = "exclude") -> dict[str, Tensor]:
    """Per-sample cosine similarity of a and b (N x D, paired rows): raw, low band and high band.

    The bands are fd's (cmkd_bench.losses): rfft along the feature, bins 1..cut (low, dc="exclude")
    or 0..cut (dc="include", the reference notebook's) and cut+1..D/2 (high); see cmkd_bench.reporting.freqsim.
    """
    return band_cosines(a, b, checked_cut(a.shape[1], split), dc)


def checked_cut(dim: int, split: float) -> int:
    if not 0 < split < 1:
        raise UserError(f"--split must be in (0, 1), got {split}")
    cut = low_band_cut(dim, split)
    if not 1 <= cut < dim // 2:
        raise UserError(f"a feature of dimension {dim} has no low and high band at split {split}; "
                        f"choose a split between {1 / (dim // 2):.3g} and {1 - 1 / (dim // 2):.3g}")
    return cut


def checked_choices(dc: str, feature: str) -> tuple[tuple[str, ...], str]:
    if dc not in DC_OPTIONS:
        raise UserError(f"--dc {dc!r}: choose include, exclude or both")
    if feature not in FEATURES:
        raise UserError(f"--feature {feature!r}: choose post (the reference notebook's) or pre")
    return DC_OPTIONS[dc], FEATURES[feature]


@dataclass
class SimilaritySettings:
    """How the statistic is computed (the CLI's --split, --on, --dc, --feature, --control-seed)."""

    split: float = 0.5
    on: str = "test"
    dc: str = "both"
    feature: str = "post"
    control_seed: int = 0


def _similarity(a: Tensor, b: Tensor, names: tuple[str, str], settings: SimilaritySettings,
                **fields: Any) -> FreqSimilarity:
    conventions, _ = checked_choices(settings.dc, settings.feature)
    cut = checked_cut(a.shape[1], settings.split)
    shares = {name: (float(dc_share(x).mean()), float(dc_share(x).std())) for name, x in zip(names, (a, b))}
    rows = similarity_rows(a, b, cut, conventions, seed=settings.control_seed)
    return FreqSimilarity(feature_dim=a.shape[1], split=settings.split, cut=cut, feature=settings.feature,
                          on=settings.on, samples=len(a), conventions=conventions, rows=rows, dc_share=shares,
                          control_seed=settings.control_seed, **fields)


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
                    backbones: dict[str, str] | None = None, settings: SimilaritySettings | None = None,
                    echo: Callable[[str], None] = print) -> FreqSimilarity:
    settings = settings or SimilaritySettings()
    _, attr = checked_choices(settings.dc, settings.feature)
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
    checked_cut(dims[first], settings.split)  # before any training: a bad split fails at once
    check_on(settings.on)
    keys = []
    for modality, (model, resolved, _) in models.items():
        obtain_teacher(resolved, model, RunCallbacks(on_message=echo, on_phase=lambda label, epochs, steps: echo(
            f"training {label} teacher ({epochs} epochs; cached for runs and analyses)")))
        keys.append(teacher_key(resolved.config))
    data, device = models[first][1].data, models[first][1].device
    feature_a, _ = pooled_features(models[first][0], data, settings.on, first, device, attr=attr)
    feature_b, _ = pooled_features(models[second][0], data, settings.on, second, device, attr=attr)
    return _similarity(feature_a, feature_b, (first, second), settings, dataset=data.spec.name,
                       modalities=(first, second), backbones=(models[first][2], models[second][2]),
                       compared="teachers", sources=tuple(keys))


def run_freq_similarity(run: str | Path, settings: SimilaritySettings | None = None,
                        student_weights: str | None = None, data_root: str | None = None,
                        device_name: str = "auto") -> FreqSimilarity:
    """The same measure between a run's teacher and its distilled student (what the method aligned)."""
    settings = settings or SimilaritySettings()
    _, attr = checked_choices(settings.dc, settings.feature)
    features = run_features(run, student_weights, settings.on, samples=None, data_root=data_root,
                            device_name=device_name, attr=attr)
    record = features.record
    modalities = (str(record["teacher_modality"]), str(record["student_modality"]))
    return _similarity(features.teacher, features.student, ("teacher", "student"), settings,
                       dataset=str(record["dataset"]), modalities=modalities,
                       backbones=(record["teacher_backbone"], record["student_backbone"]),
                       compared="run", sources=(str(record["run_id"]),))


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
    kind = "post-activation" if result.feature == "post" else "pre-activation"
    shares = ", ".join(f"{name} {mean:.3f} ± {std:.3f}" for name, (mean, std) in result.dc_share.items())
    lines = [f"{result.dataset}: cosine similarity of pooled {kind} features, {models} ({result.backbones[0]}, "
             f"D={result.feature_dim}), {result.on} split (n={result.samples}); K = {result.cut} "
             f"(split {result.split}), high = rfft bins {result.cut + 1}..{result.feature_dim // 2}",
             f"DC share of energy: {shares}",
             f"{'control':<34} {'convention':<42} {'raw':>13} {'low':>13} {'high':>13}"]
    for control in CONTROLS:
        for convention in result.conventions:
            cells = {r.band: f"{r.mean:.3f} ± {r.std:.3f}" for r in result.rows
                     if (r.control, r.convention) == (control, convention)}
            if cells:
                lines.append(f"{CONTROLS[control]:<34} {CONVENTIONS[convention]:<42} "
                             + " ".join(f"{cells[band]:>13}" for band in BANDS))
    return "\n".join(lines)


def plot_freq_similarity(result: FreqSimilarity, directory: Path, stem: str | None = None) -> list[Path]:
    """One panel per DC convention: the three bands' mean cosine (± std), one bar per control."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(result.conventions), figsize=(4.6 * len(result.conventions), 3.4),
                                squeeze=False)
    colours = {"none": "#4c72b0", "permuted": "#dd8452", "random-split": "#55a868"}
    width = 0.8 / len(CONTROLS)
    for axis, convention in zip(axes[0], result.conventions):
        for index, control in enumerate(CONTROLS):
            rows = [r for r in result.rows if (r.control, r.convention) == (control, convention)]
            positions = [b + (index - 1) * width for b in range(len(BANDS))]
            axis.bar(positions, [r.mean for r in rows], width, yerr=[r.std for r in rows], capsize=2,
                     color=colours[control], label=CONTROLS[control])
        axis.set_xticks(range(len(BANDS)), BANDS)
        axis.axhline(0.0, color="k", linewidth=0.6)
        axis.set_ylim(-1.05, 1.1)
        axis.set_title(CONVENTIONS[convention], fontsize=9)
        axis.set_ylabel("cosine similarity")
    axes[0][0].legend(fontsize=7, loc="lower left")
    models = "teacher vs student" if result.compared == "run" else "teachers"
    figure.suptitle(f"{result.dataset}: {result.modalities[0]} vs {result.modalities[1]} {models} "
                    f"({result.backbones[0]}, {result.feature}-activation, K={result.cut})", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, directory, file_stem(stem or f"freq-similarity-{result.dataset}"))


def write_freq_similarity(result: FreqSimilarity, directory: Path, stem: str | None = None) -> list[Path]:
    """The result as JSON and its plot (PNG and SVG) in `directory`; returns the files written."""
    stem = stem or (f"freq-similarity-{result.sources[0]}" if result.compared == "run"
                    else f"freq-similarity-{result.dataset}")
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
                 data_root: str | None = None, device_name: str = "auto", attr: str = "feature") -> RunFeatures:
    record, run_dir = run_record(run)
    if (record.get("config") or {}).get("teacher_fusion"):  # a FusionModel, whose fused feature is wider
        raise UserError(f"run {record['run_id']} has the multimodal teacher {record['teacher_modality']}: its fused "
                        "feature (the encoders' features concatenated) has another dimension than the student's, and "
                        "one t-SNE of both needs one; use a run with a one-modality teacher")
    device = resolve_device(device_name)
    check_on(split)
    data = build_data(record["dataset"], data_root, dict(data_options(record)))
    features = {}
    for role, weights in (("teacher", teacher_weights_path(record, run_dir)),
                          ("student", student_weights_path(record, run_dir, student_weights))):
        modality, backbone = record[f"{role}_modality"], record[f"{role}_backbone"]
        model = build_model(backbone, data, modality, int(record["seed"]), device)
        load_weights(model, weights, device, f"{role} weights file")
        features[role], labels = pooled_features(model, data, split, modality, device, limit=samples, attr=attr)
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
