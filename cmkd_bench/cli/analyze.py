"""`cmkd-bench analyze freq-similarity|tsne`: the FD-CMKD paper's analyses (cmkd_bench.reporting.analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from ..artefacts.files import check_writable_dir
from ..catalog import load_all
from ..errors import UserError
from ..reporting.analysis import (FreqSimilarity, SimilaritySettings, TeacherRequest, check_on, checked_choices,
                                  freq_similarity, freq_similarity_table, plot_tsne, run_features,
                                  run_freq_similarity, tsne_embedding, write_freq_similarity)
from .options import plugin_option


@click.group("analyze")
def analyze_group() -> None:
    """The FD-CMKD paper's analyses: frequency-band similarity of teachers, t-SNE of features."""


def _backbone_pairs(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        modality, sep, backbone = item.partition("=")
        if not sep or not modality.strip() or not backbone.strip():
            raise UserError(f"--teacher {item!r} is not MODALITY=BACKBONE; write for example --teacher audio=small-cnn")
        pairs[modality.strip()] = backbone.strip()
    return pairs


@analyze_group.command("freq-similarity")
@click.option("--dataset", help="Dataset (see `cmkd-bench list datasets`): compare its two teachers.")
@click.option("--run", "run", type=click.Path(),
              help="Instead: compare a run's teacher with its distilled student (OUT/<run_id>).")
@click.option("--modalities", help="Two modalities, comma-separated. Default: the dataset's pair.")
@click.option("--teacher", "teachers", multiple=True, metavar="MODALITY=BACKBONE",
              help="A teacher's backbone (repeatable). Default: the dataset's for the modality.")
@click.option("--split", type=float, default=0.5, show_default=True,
              help="Low band = rfft bins 1..K (or 0..K with the DC), K = split x D/2 (as fd's split).")
@click.option("--dc", default="both", show_default=True,
              help="include: the reference notebook's low band (DC kept, bins 0..K); exclude: the training "
                   "loss's (bins 1..K); both.")
@click.option("--feature", default="post", show_default=True,
              help="post: the pooled post-activation feature (what the reference's `pre_out` is after its "
                   "in-place ReLU, and fd's default); pre: before the last ReLU.")
@click.option("--control-seed", type=int, default=0, show_default=True,
              help="Seed of the controls' channel permutation and random orthonormal split.")
@click.option("--on", "on", default="test", show_default=True, help="Split whose samples are compared.")
@click.option("--seed", type=int, default=0, show_default=True, help="Teacher seed (as in the runs).")
@click.option("--epochs", type=int, help="Teacher recipe epochs (as in the runs). Default: the dataset's.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Dataset or recipe setting, as in `run`.")
@click.option("--data-root", type=click.Path(), help="Where a real or bring-your-own dataset lives.")
@click.option("--out", default="runs", show_default=True, type=click.Path(),
              help="Runs folder: teachers are cached in OUT/teachers.")
@click.option("--teacher-cache", type=click.Path(), help="Where trained teachers are cached. Default: OUT/teachers.")
@click.option("--device", default="auto", show_default=True)
@click.option("--output-dir", default="analysis", show_default=True, type=click.Path(),
              help="Where the table (JSON) and plot go.")
@plugin_option
def freq_similarity_command(dataset: str | None, run: str | None, modalities: str | None, teachers: tuple[str, ...],
                            split: float, dc: str, feature: str, control_seed: int, on: str,
                            seed: int, epochs: int | None, sets: tuple[str, ...], data_root: str | None, out: str,
                            teacher_cache: str | None, device: str, output_dir: str, plugins: tuple[str, ...]) -> None:
    """Cosine similarity across modalities of two models' features: raw, low band, high band.

    With --dataset: the dataset's two unimodal teachers (from the teacher cache, trained if missing).
    With --run: a run's teacher and its distilled student.
    """
    load_all(plugins)
    check_writable_dir(output_dir, "--output-dir")
    if (dataset is None) == (run is None):
        raise UserError("give --dataset (its two teachers) or --run (a run's teacher and student), not both")
    check_on(on)
    checked_choices(dc, feature)
    settings = SimilaritySettings(split=split, on=on, dc=dc, feature=feature, control_seed=control_seed)
    if run is not None:
        _report_freq_similarity(run_freq_similarity(run, settings, data_root=data_root, device_name=device),
                                Path(output_dir))
        return
    pair = None
    if modalities:
        names = [m.strip() for m in modalities.split(",") if m.strip()]
        if len(names) != 2 or names[0] == names[1]:
            raise UserError(f"--modalities {modalities!r}: give two different modalities, e.g. visual,audio")
        pair = (names[0], names[1])
    request = TeacherRequest(dataset=dataset, seed=seed, sets=sets, epochs=epochs, data_root=data_root, out=out,
                             teacher_cache=teacher_cache, device=device)
    result = freq_similarity(request, pair, _backbone_pairs(teachers), settings, echo=click.echo)
    _report_freq_similarity(result, Path(output_dir))


def _report_freq_similarity(result: FreqSimilarity, directory: Path) -> None:
    click.echo(freq_similarity_table(result))
    for path in write_freq_similarity(result, directory):
        click.echo(f"wrote {path}")


@analyze_group.command("tsne")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--student-weights", "student_weights", multiple=True, type=click.Path(),
              help="Student state_dict for each RUN, in order (default: the run's student.pt).")
@click.option("--on", "on", default="test", show_default=True, help="Split whose samples are embedded.")
@click.option("--samples", type=int, default=500, show_default=True, help="At most this many samples per run.")
@click.option("--perplexity", type=float, default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="t-SNE's random state.")
@click.option("--data-root", type=click.Path(), help="Where a real or bring-your-own dataset lives.")
@click.option("--device", default="auto", show_default=True)
@click.option("--output-dir", default="analysis", show_default=True, type=click.Path())
@plugin_option
def tsne_command(runs: tuple[str, ...], student_weights: tuple[str, ...], on: str, samples: int, perplexity: float,
                 seed: int, data_root: str | None, device: str, output_dir: str, plugins: tuple[str, ...]) -> None:
    """t-SNE of teacher and student features of RUN (or two RUNs side by side): colour = class, marker = modality."""
    load_all(plugins)
    check_writable_dir(output_dir, "--output-dir")
    if len(runs) > 2:
        raise UserError(f"{len(runs)} runs given; tsne draws one run or a pair of runs")
    if student_weights and len(student_weights) != len(runs):
        raise UserError(f"{len(student_weights)} --student-weights for {len(runs)} runs; give one per run, in order")
    if samples < 4:
        raise UserError(f"--samples must be at least 4, got {samples}")
    weights = list(student_weights) or [None] * len(runs)
    features = [run_features(run, w, on, samples, data_root, device) for run, w in zip(runs, weights)]
    embeddings = [tsne_embedding(f, perplexity, seed) for f in features]
    for path in plot_tsne(features, embeddings, Path(output_dir)):
        click.echo(f"wrote {path}")
