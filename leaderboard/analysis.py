"""Regenerate leaderboard/ANALYSIS.md, "Does FD-CMKD's premise hold?" (issue 13), from runs and teachers.

    python leaderboard/analysis.py [--root leaderboard] [--seeds 0,1,2,3,4] [--jobs 2] [--device auto]
                                   [--no-runs | --report-only] [--only small-resnet|sweep] [--allow-dirty]
    python leaderboard/analysis.py --smoke --root /tmp/analysis-smoke      (1 epoch, 1 seed, tiny data)

1. Runs, through the suite machinery (finished runs are skipped, interrupted ones resume):
   - ROOT/runs is the leaderboard's: `leaderboard/regenerate.py` makes its protocol-v2 runs, no-kd on
     the tuned recipe and fd, fd-no-align, fd-random-split tuned and at their defaults (the suites'
     `defaults:`); this script reads them (only --smoke makes tiny runs of its own there);
   - ROOT/runs-small-resnet (suites/synth-av-small-resnet.yaml's folder and data): no-kd, fd, fd-no-align
     and fd-random-split on synth-av with small-resnet teachers and students, at their defaults, on
     the --seeds (0-4);
   - ROOT/sweeps/synth-av-shared: suites/synth-av-shared-sweep.yaml (synth-av's `shared` swept), at
     the defaults, on the --seeds.
   `--only small-resnet` (or `sweep`) runs that part alone, and step 2 then measures the small-resnet
   teachers only (or nothing).
   Sections 2 and 3 test every difference paired by seed and correct the p-values with Holm's method
   (cmkd_bench/reporting/statistics.py); the verdicts count what survives the correction.
2. `analyze freq-similarity` of the two teachers of every seed, in each of those configurations,
   for the post- and the pre-activation feature, both DC conventions and both controls, through
   the folders' teacher caches (a teacher whose checkpoint is not there, as in a fresh checkout,
   where checkpoints are not committed, is trained again with its recorded seed and recipe; the
   JSON names each teacher's cache key). Written to ROOT/analysis/*.json (committed).
3. The sweep figure (`cmkd-bench plot sweep`) in ROOT/figures/.
4. ROOT/ANALYSIS.md from those JSON files and the run records only: every number in it is read
   from a file this script wrote or a run record; and ROOT/LEADERBOARD-small-resnet.md, the small-resnet
   records' leaderboard (titled: at the defaults, not tuned, its seeds).

--no-runs skips step 1 (the tables then hold what the folders have); --report-only does step 4
alone (no training at all: the report from the committed JSON files and records). With ROOT = leaderboard/,
runs are refused from a checkout with uncommitted changes outside this script's outputs (the
records would not name the code they were made with), unless --allow-dirty. --smoke (1 epoch,
seed 0, tiny data, two values of `shared`) checks the whole pipeline in minutes; it refuses to
write into leaderboard/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from cmkd_bench.artefacts.files import write_json_atomic
from cmkd_bench.artefacts.provenance import GENERATED, uncommitted_files
from cmkd_bench.artefacts.records import (direction_label, hparams_changed, load_records, metric, record_metric_name,
                                          teacher_outliers)
from cmkd_bench.cli.suite import run_command_line
from cmkd_bench.errors import UserError
from cmkd_bench.experiments.plan import DatasetEntry, Suite, load_suite, suite_from_mapping
from cmkd_bench.experiments.suite import run_suite
from cmkd_bench.reporting.analysis import (FreqSimilarity, SimilaritySettings, TeacherRequest, freq_similarity,
                                           plot_freq_similarity)
from cmkd_bench.reporting.freqsim import BANDS, CONTROLS, CONVENTIONS, BandRow
from cmkd_bench.reporting.leaderboard import render
from cmkd_bench.reporting.leaderboard.headline import is_selected
from cmkd_bench.reporting.leaderboard.protocol import is_candidate, split_protocols
from cmkd_bench.reporting.plots import plot_sweep, sweep_panels
from cmkd_bench.reporting.statistics import PairedResult, holm, pair_by_seed, paired_difference

HERE = Path(__file__).resolve().parent
OUTPUTS = GENERATED  # results (cmkd_bench.artefacts.provenance): changes there do not make the tree dirty
FD_METHODS = ("no-kd", "fd", "fd-no-align", "fd-random-split")
# the paired comparisons of section 2: fd and its two controls against no-kd, and fd against each control
# (fd-no-align: fd's heads and shared/task split without the frequency alignment; fd-random-split: any
# split of the same sizes in place of the DFT bands)
CONTRASTS = (("fd", "no-kd"), ("fd-no-align", "no-kd"), ("fd-random-split", "no-kd"), ("fd", "fd-no-align"),
             ("fd", "fd-random-split"))
SETTINGS = (("tuned", "Tuned: each method's selected configuration (its study of 8 on the selection seed), no-kd on "
                      "the tuned recipe"),
            ("default", "At the official defaults (under protocol v2: on the tuned recipe)"))
SIGNIFICANCE = 0.05
SWEEP_KEY = "shared"
# (label, dataset, backbone or None for the dataset's own, runs folder under ROOT)
CONFIGS = (("synth-av · small-cnn", "synth-av", None, "runs"),
           ("synth-av · small-resnet", "synth-av", "small-resnet", "runs-small-resnet"),
           ("synth-rgbd · small-seg", "synth-rgbd", None, "runs"))
SMOKE_SETS = {"synth-av": ("train=64", "val=32", "test=32", "image_size=16"),
              "synth-rgbd": ("train=16", "val=8", "test=8", "image_size=16")}
FEATURES = ("post", "pre")
PARTS = ("small-resnet", "sweep")  # what step 1 runs (--only chooses)


# ---------------------------------------------------------------------------------------------
# 1. Runs


def suites(root: Path, seeds: list[int], device: str, smoke: bool, only: tuple[str, ...] = PARTS) -> list[Suite]:
    """The suites step 1 runs: ROOT/runs only under --smoke, then the `only` parts (small-resnet, sweep)."""
    epochs = 1 if smoke else None

    def datasets(names: list[str]) -> list[DatasetEntry]:
        return [DatasetEntry(name, SMOKE_SETS[name] if smoke else ()) for name in names]

    base = suite_from_mapping({"datasets": ["synth-av", "synth-rgbd"], "methods": list(FD_METHODS),
                               "directions": "both", "seeds": seeds}, where="analysis.py")
    base = replace(base, datasets=datasets(["synth-av", "synth-rgbd"]), out=str(root / "runs"), device=device,
                   epochs=epochs)
    resnet = load_suite(HERE / "suites" / "synth-av-small-resnet.yaml")
    # the suite files' own data (their enlarged val and test splits) unless --smoke
    resnet = replace(resnet, methods=base.methods, datasets=datasets(["synth-av"]) if smoke else resnet.datasets,
                     seeds=seeds, out=str(root / "runs-small-resnet"), device=device, epochs=epochs)
    sweep = load_suite(HERE / "suites" / "synth-av-shared-sweep.yaml")
    grid = tuple((k, ("0", "1") if smoke and k == SWEEP_KEY else v) for k, v in sweep.grid)
    sweep = replace(sweep, datasets=datasets(["synth-av"]) if smoke else sweep.datasets, seeds=seeds, grid=grid,
                    out=str(root / "sweeps" / "synth-av-shared"), device=device, epochs=epochs)
    # ROOT/runs is the leaderboard's: regenerate.py makes its protocol-v2 runs (no-kd, fd, fd-no-align and
    # fd-random-split tuned and at their defaults); only --smoke makes tiny ones of its own there
    chosen = [suite for name, suite in (("small-resnet", resnet), ("sweep", sweep)) if name in only]
    return [base, *chosen] if smoke else chosen


def run_all(root: Path, seeds: list[int], jobs: int, device: str, smoke: bool, only: tuple[str, ...] = PARTS) -> int:
    code = 0
    for suite in suites(root, seeds, device, smoke, only):
        code |= run_suite(suite, jobs, [device], dry_run=False, command=run_command_line)
    return code


# ---------------------------------------------------------------------------------------------
# 2. freq-similarity of the teachers


def similarity_file(root: Path, dataset: str, backbone: str | None, feature: str, seed: int) -> Path:
    return root / "analysis" / f"freq-similarity-{dataset}-{backbone or 'default'}-{feature}-s{seed}.json"


def config_sets(dataset: str, folder: str, smoke: bool) -> tuple[str, ...]:
    """The data options of a configuration's teachers: the tiny --smoke data; the small-resnet suite's own
    (its enlarged splits: the teachers its runs used); the dataset's defaults for ROOT/runs (the teachers at
    the dataset's own recipe: an analysis cannot ask for protocol v2's tuned recipe)."""
    if smoke:
        return SMOKE_SETS[dataset]
    if folder == "runs-small-resnet":
        entry = next(e for e in load_suite(HERE / "suites" / "synth-av-small-resnet.yaml").datasets if e.name == dataset)
        return tuple(entry.sets)
    return ()


def measure_similarities(root: Path, seeds: list[int], device: str, smoke: bool, only: tuple[str, ...] = PARTS) -> None:
    """Step 2 for the CONFIGS; with `only` (not every part), for the small-resnet configuration alone."""
    for _, dataset, backbone, folder in CONFIGS:
        if set(only) != set(PARTS) and not (folder == "runs-small-resnet" and "small-resnet" in only):
            continue
        for seed in seeds:
            request = TeacherRequest(dataset=dataset, seed=seed, sets=config_sets(dataset, folder, smoke),
                                     epochs=1 if smoke else None, out=str(root / folder), device=device)
            for feature in FEATURES:
                result = freq_similarity(request, backbones={"visual": backbone, "audio": backbone} if backbone else None,
                                         settings=SimilaritySettings(feature=feature), echo=lambda text: None)
                path = similarity_file(root, dataset, backbone, feature, seed)
                write_json_atomic(asdict(result), path)
                if seed == seeds[0] and feature == "post":
                    plot_freq_similarity(result, root / "figures", path.stem)
                print(f"wrote {path}", file=sys.stderr)


def read_similarity(path: Path) -> FreqSimilarity:
    raw = json.loads(path.read_text())
    raw["rows"] = [BandRow(**row) for row in raw["rows"]]
    return FreqSimilarity(**{**raw, "modalities": tuple(raw["modalities"]), "backbones": tuple(raw["backbones"]),
                             "conventions": tuple(raw["conventions"]), "sources": tuple(raw["sources"]),
                             "dc_share": {k: tuple(v) for k, v in raw["dc_share"].items()}})


# ---------------------------------------------------------------------------------------------
# 4. The report


def mean_sd(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def load_similarities(root: Path, dataset: str, backbone: str | None, feature: str, seeds: list[int]) -> list[FreqSimilarity]:
    """The measured seeds' results of one configuration and feature (those with a JSON file)."""
    return [read_similarity(p) for s in seeds if (p := similarity_file(root, dataset, backbone, feature, s)).is_file()]


def seed_mean(results: list[FreqSimilarity], band: str, convention: str, control: str = "none") -> float:
    """One cell of a similarity table, averaged over the seeds' results."""
    return statistics.mean(r.value(band, convention, control) for r in results)


def similarity_section(root: Path, seeds: list[int]) -> list[str]:
    lines = ["## 1. Cross-modal cosine similarity of the two teachers' pooled features", "",
             "`cmkd-bench analyze freq-similarity` (cmkd_bench/reporting/freqsim.py documents it against the reference "
             "notebook): per test sample, the cosine between the two unimodal teachers' pooled features, raw and "
             "split into a low band (rfft bins 0..K with the DC, the notebook's convention; 1..K without, the "
             "training loss's) and a high band (K+1..D/2), K = D/4. Controls: the second teacher's channels in a "
             "random order (an equally valid teacher: what survives is not channel-frequency structure), and the "
             "Fourier split replaced by a random orthonormal split of the same sizes. Cells: mean over samples, "
             "then mean ± std over the teacher seeds "
             f"({', '.join(map(str, seeds))}). `post`: the pooled post-activation feature (the notebook's and fd's; "
             "the reference's `pre_out` is post-ReLU after its in-place ReLU); `pre`: before the last ReLU.", ""]
    for label, dataset, backbone, _ in CONFIGS:
        for feature in FEATURES:
            results = load_similarities(root, dataset, backbone, feature, seeds)
            if not results:
                lines += [f"### {label} · {feature}", "", "(not measured: run the script without --no-runs)", ""]
                continue
            first = results[0]
            shares = "; ".join(f"{m} {mean_sd([r.dc_share[m][0] for r in results])}" for m in first.dc_share)
            lines += [f"### {label} · {feature}-activation feature (D = {first.feature_dim}, K = {first.cut}, "
                      f"n = {first.samples} test samples, {len(results)} seed(s))", "",
                      f"DC share of each teacher's feature energy (D·mean² / ‖x‖²): {shares}", "",
                      "| split | convention | raw | low | high |", "|---|---|---:|---:|---:|"]
            for control in CONTROLS:
                for convention in first.conventions:
                    cells = [mean_sd([r.value(band, convention, control) for r in results]) for band in BANDS]
                    lines.append(f"| {CONTROLS[control]} | {CONVENTIONS[convention]} | " + " | ".join(cells) + " |")
            lines += ["", reading(results), ""]
    return lines


def reading(results: list[FreqSimilarity]) -> str:
    """The comparisons the premise turns on, as numbers (means over seeds)."""
    def v(band: str, convention: str, control: str = "none") -> float:
        return seed_mean(results, band, convention, control)

    return (f"Reading: low band with the DC {v('low', 'include'):.3f} vs without {v('low', 'exclude'):.3f} "
            f"(the DC bin's part: {v('low', 'include') - v('low', 'exclude'):+.3f}); with one teacher's channels "
            f"permuted the low band keeps {v('low', 'include', 'permuted'):.3f} (DC kept) / "
            f"{v('low', 'exclude', 'permuted'):.3f} (DC dropped); a random split of the same sizes gives "
            f"{v('low', 'include', 'random-split'):.3f} / {v('low', 'exclude', 'random-split'):.3f} for its low part "
            f"and {v('high', 'include', 'random-split'):.3f} for its high part (Fourier high band: "
            f"{v('high', 'include'):.3f}).")


def run_records(root: Path, folders: tuple[str, ...]) -> tuple[int, list[dict[str, Any]]]:
    """(protocol version, completed non-candidate records) of the folders: the newest protocol present
    only (tables never mix protocols; protocol v2's selection runs are no rows)."""
    records = [r for folder in folders if (root / folder).is_dir() for r in load_records([root / folder])
               if r.get("status") == "completed"]
    split = split_protocols(records)
    return split.version, [r for r in split.records if not is_candidate(r)]


def in_setting(record: dict[str, Any], setting: str, version: int) -> bool:
    """Whether a record is its method's row in a setting: "default" (no hyper-parameter changed) or "tuned"
    (protocol v2's selected configuration; no-kd's tuned-recipe runs are both). Protocol v1 tuned nothing
    fairly (issue 30): its records are "default" rows only."""
    if setting == "default":
        return not hparams_changed(record)
    return version >= 2 and is_selected(record)


# the folders of section 2: the leaderboard's (tuned under its protocol, and at the defaults) and the
# small-resnet one (suites/synth-av-small-resnet.yaml: at the defaults only, no tuning protocol)
RUN_FOLDERS = (("runs", "the leaderboard's runs (leaderboard/runs)"),
               ("runs-small-resnet", "synth-av with small-resnet teachers and students (leaderboard/runs-small-resnet), "
                                     "at the defaults, not tuned"))


def method_rows(root: Path, setting: str = "default",
                folder: str = "runs") -> list[tuple[str, str, dict[str, dict[int, float]]]]:
    """(dataset · backbone · direction, metric, method -> seed -> test metric) of the FD_METHODS in a setting,
    from one folder (each folder's newest protocol)."""
    version, records = run_records(root, (folder,))
    groups: dict[tuple[str, ...], dict[str, dict[int, float]]] = {}
    for r in records:
        if r["method"] not in FD_METHODS or not in_setting(r, setting, version):
            continue
        key = (r["dataset"], r["student_backbone"], direction_label(r["teacher_modality"], r["student_modality"]),
               record_metric_name(r), json.dumps([r.get("data_options"), (r.get("config") or {}).get("recipe")],
                                                 sort_keys=True, default=str))
        groups.setdefault(key, {}).setdefault(r["method"], {})[int(r["seed"])] = float(metric(r, "test"))
    return [(f"{dataset} · {backbone} · {direction}", metric_name, tests)
            for (dataset, backbone, direction, metric_name, _), tests in sorted(groups.items())]


def paired(tests: dict[str, dict[int, float]], a: str, b: str) -> list[float]:
    """test(a) - test(b) per seed both have (the same teacher and data)."""
    return [tests[a][s] - tests[b][s] for s in sorted(set(tests.get(a, {})) & set(tests.get(b, {})))]


def compare(tests: dict[str, dict[int, float]], a: str, b: str) -> PairedResult:
    """a - b paired by seed: mean, Student-t 95% CI, paired t-test p (cmkd_bench.reporting.statistics)."""
    first, second = tests.get(a, {}), tests.get(b, {})
    values, baseline = pair_by_seed(list(first.values()), list(first), list(second.values()), list(second))
    return paired_difference(values, baseline)


class Contrast:
    """a − b in one row (dataset · backbone · direction), paired by seed, with its Holm-adjusted p. (A plain
    class: this file is also loaded by path, where dataclasses cannot find its module.)"""

    def __init__(self, label: str, a: str, b: str, result: PairedResult, p_holm: float | None = None) -> None:
        self.label, self.a, self.b, self.result, self.p_holm = label, a, b, result, p_holm

    @property
    def sign(self) -> int:
        """+1 / -1 where a differs from b after Holm's correction (adjusted p < 0.05), else 0."""
        if self.p_holm is None or self.p_holm >= SIGNIFICANCE or self.result.mean is None:
            return 0
        return 1 if self.result.mean > 0 else -1


def contrasts(rows: list[tuple[str, str, dict[str, dict[int, float]]]]) -> list[Contrast]:
    """Every CONTRAST of every row that has both sides, with Holm's adjustment over all of them (the family
    is one setting's table)."""
    found = [Contrast(label, a, b, compare(tests, a, b)) for label, _, tests in rows for a, b in CONTRASTS]
    found = [c for c in found if c.result.n]
    for contrast, adjusted in zip(found, holm([c.result.p_value for c in found])):
        contrast.p_holm = adjusted
    return found


def p_text(p: float | None) -> str:
    return "—" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def contrast_line(c: Contrast) -> str:
    r = c.result
    ci = "—" if r.ci_low is None else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
    mark = {1: " ▲", -1: " ▼", 0: ""}[c.sign]
    return f"| {c.label} | {c.a} − {c.b} | {r.n} | {r.mean:+.2f} | {ci} | {p_text(r.p_value)} | {p_text(c.p_holm)}{mark} |"


def method_section(root: Path) -> list[str]:
    lines = ["## 2. fd against fd-no-align, fd-random-split and no-kd", "",
             "Test metric at the best-validation epoch over the reported seeds; differences are paired by seed (the "
             "same seed is the same teacher and data order): their mean, Student-t 95% CI and paired t-test p, and "
             "that p adjusted by Holm's method over every comparison of its table (▲ / ▼: adjusted p < 0.05). "
             "fd-no-align is fd without its frequency alignment (its heads and losses otherwise); fd-random-split "
             "is fd with its DFT band split replaced by a fixed random orthonormal split of the same sizes "
             "(methods/fd_random_split.py): fd − fd-no-align is what the alignment adds, fd − fd-random-split what "
             "the frequency split adds over any split. A table holds one folder's records of one protocol.", ""]
    for folder, where in RUN_FOLDERS:
        version, _ = run_records(root, (folder,))
        settings = SETTINGS if folder == "runs" else SETTINGS[1:]
        for setting, title in settings:
            rows = method_rows(root, setting, folder)
            heading = title if folder == "runs" else f"At the defaults: {where}"
            # the leaderboard's folder names its protocol; the small-resnet runs are at the defaults under none
            suffix = f": records of protocol v{version}" if folder == "runs" else ""
            lines += [f"### {heading}{suffix}", ""]
            if not rows:
                reason = "protocol v1 tuned nothing fairly" if setting == "tuned" and version < 2 else "no runs yet"
                lines += [f"({reason})", ""]
                continue
            lines += table_lines(rows)
    return lines


def table_lines(rows: list[tuple[str, str, dict[str, dict[int, float]]]]) -> list[str]:
    """Scores (mean ± std, seeds) and the paired comparisons of one table."""
    lines = ["| dataset · backbone · direction | metric | " + " | ".join(FD_METHODS) + " |",
             "|---|---|" + "---:|" * len(FD_METHODS)]
    for label, metric_name, tests in rows:
        cells = [mean_sd(list(tests[m].values()), 2) + f" (n={len(tests[m])})" if tests.get(m) else "—"
                 for m in FD_METHODS]
        lines.append(f"| {label} | {metric_name} | " + " | ".join(cells) + " |")
    lines += ["", "| dataset · backbone · direction | comparison | seeds | Δ | 95% CI | p | p (Holm) |",
              "|---|---|---:|---:|---|---:|---:|"]
    return lines + [contrast_line(c) for c in contrasts(rows)] + [""]


def sweep_section(root: Path) -> list[str]:
    folder = root / "sweeps" / "synth-av-shared"
    records = load_records([folder]) if folder.is_dir() else []
    seeds = sorted({int(r["seed"]) for r in records if r.get("status") == "completed"})
    lines = [f"## 3. When does distillation across modalities help? synth-av's `shared` swept, at the defaults, "
             f"{len(seeds)} seeds", "",
             "`shared` sets how much of each modality's class evidence is shared by both (0: none, 1: all); "
             "suites/synth-av-shared-sweep.yaml, every method at its official defaults (not tuned). Each method's "
             "test gain over no-kd at the same `shared` and seed, mean ± std over seeds (`cmkd-bench plot sweep`).",
             ""]
    try:
        panels = sweep_panels(records, SWEEP_KEY)
    except UserError as error:
        return lines + [f"(no sweep yet: {error})", ""]
    figures = plot_sweep(records, SWEEP_KEY, root / "figures")
    order = [m.name for m in load_suite(HERE / "suites" / "synth-av-shared-sweep.yaml").methods]
    lines += [f"![sweep]({figures[0].relative_to(root).as_posix()})", ""]
    tests = sweep_tests(records)
    lines += ["Each cell: the mean paired gain ± its std over seeds, then the paired t-test's p adjusted by Holm's "
              "method over every cell of the panel (▲ / ▼: adjusted p < 0.05).", ""]
    for panel in panels:
        xs = [p.x for p in panel.no_kd]
        lines += [f"### {panel.dataset} · {panel.direction} ({panel.metric} points)", "",
                  f"| method | " + " | ".join(f"{SWEEP_KEY}={x}" for x in xs) + " |",
                  "|---|" + "---:|" * len(xs),
                  "| no-kd (its own test) | " + " | ".join(f"{p.mean:.2f} ± {p.std:.2f}" for p in panel.no_kd) + " |"]
        adjusted = sweep_holm(tests, panel.direction)
        for label, points in sorted(panel.series.items(),
                                    key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0])):
            by_x = {}
            for point in points:
                p_holm = adjusted.get((label, point.x))
                mark = "" if p_holm is None or p_holm >= SIGNIFICANCE else (" ▲" if point.mean > 0 else " ▼")
                by_x[point.x] = f"{point.mean:+.2f} ± {point.std:.2f} (p {p_text(p_holm)}{mark})"
            lines.append(f"| {label} | " + " | ".join(by_x.get(x, "—") for x in xs) + " |")
        lines.append("")
    return lines


def sweep_tests(records: list[dict[str, Any]]) -> dict[tuple[str, str, float], dict[int, float]]:
    """(direction, method, swept value) -> seed -> test metric, of the sweep's completed, non-candidate runs."""
    found: dict[tuple[str, str, float], dict[int, float]] = {}
    for r in records:
        if r.get("status") != "completed" or is_candidate(r) or SWEEP_KEY not in (r.get("data_options") or {}):
            continue
        key = (direction_label(r["teacher_modality"], r["student_modality"]), r["method"],
               float(r["data_options"][SWEEP_KEY]))
        found.setdefault(key, {})[int(r["seed"])] = float(metric(r, "test"))
    return found


def sweep_holm(tests: dict[tuple[str, str, float], dict[int, float]], direction: str) -> dict[tuple[str, float], float | None]:
    """(method, swept value) -> Holm-adjusted p of method − no-kd paired by seed, over the direction's cells."""
    cells = []
    for (where, method, x), values in sorted(tests.items()):
        baseline = tests.get((where, "no-kd", x))
        if where != direction or method == "no-kd" or not baseline:
            continue
        first, second = pair_by_seed(list(values.values()), list(values), list(baseline.values()), list(baseline))
        cells.append(((method, x), paired_difference(first, second).p_value))
    return dict(zip([key for key, _ in cells], holm([p for _, p in cells])))


def span(values: list[float], form: str = ".3f") -> str:
    """"A to B" (smallest to largest), or the one value."""
    low, high = min(values), max(values)
    return f"{low:{form}}" if len(values) == 1 else f"{low:{form}} to {high:{form}}"


def verdict_section(root: Path, seeds: list[int]) -> list[str]:
    """What supports the premise and what does not, every number computed here from sections 1-3's sources."""
    lines = ["## 4. What supports the premise, and what does not", "",
             "Computed from the files above (post-activation features, the ones fd distils; differences paired by "
             "seed, \"significant\": Holm-adjusted p < 0.05 within the setting's table of section 2).", ""]
    sims = {label: results for label, dataset, backbone, _ in CONFIGS
            if (results := load_similarities(root, dataset, backbone, "post", seeds))}
    if sims:
        def cells(band: str, convention: str, control: str = "none") -> list[float]:
            return [seed_mean(results, band, convention, control) for results in sims.values()]

        low, high, no_dc = cells("low", "include"), cells("high", "include"), cells("low", "exclude")
        permuted, random_low = cells("low", "include", "permuted"), cells("low", "include", "random-split")
        dc_part = [(lo - nd) / lo for lo, nd in zip(low, no_dc) if lo > 0]
        kept = [p / lo for p, lo in zip(permuted, low) if lo > 0]
        above = sum(lo > hi for lo, hi in zip(low, high))
        lines += ["### The similarity statistic", "",
                  f"- As the paper measures it (DC kept), the low band is more similar across modalities than the high "
                  f"band in {above} of {len(sims)} configurations ({', '.join(sims)}): low {span(low)}, high {span(high)}.",
                  f"- Without the DC bin (the training loss's low band, the channels' mean removed) the low band's "
                  f"similarity is {span(no_dc)}" + (f": the DC bin is {span(dc_part, '.0%')} of it" if dc_part else "") + ".",
                  f"- What survives a random order of one teacher's channels is not channel-frequency structure: the low "
                  f"band keeps {span(permuted)}" + (f" ({span(kept, '.0%')} of its value)" if kept else "") + ", and a "
                  f"random orthonormal split of the same sizes gives {span(random_low)} for its low part and "
                  f"{span(cells('high', 'include', 'random-split'))} for its high part.", ""]
    meaning = {("fd", "no-kd"): "fd's gain", ("fd-no-align", "no-kd"): "its heads without the alignment",
               ("fd-random-split", "no-kd"): "with a random split", ("fd", "fd-no-align"): "what the alignment adds",
               ("fd", "fd-random-split"): "what the DFT split adds over any split of the same sizes"}
    training = []
    for folder, setting in (("runs", "tuned"), ("runs", "default"), ("runs-small-resnet", "default")):
        found = contrasts(method_rows(root, setting, folder))
        name = setting if folder == "runs" else "small-resnet, default"
        for a, b in CONTRASTS:
            these = [c for c in found if (c.a, c.b) == (a, b)]
            if not these:
                continue
            up = [c.label for c in these if c.sign > 0]
            down = [c.label for c in these if c.sign < 0]
            training.append(f"- {name}, {a} − {b} ({meaning[(a, b)]}): "
                            f"{span([c.result.mean for c in these], '+.2f')} points over {len(these)} dataset · "
                            f"backbone · direction rows; significant above in {len(up)} ({', '.join(up) or 'none'}), "
                            f"below in {len(down)} ({', '.join(down) or 'none'}).")
    if training:
        lines += ["### Training with it (section 2)", "", *training, ""]
    folder = root / "sweeps" / "synth-av-shared"
    try:
        panels = sweep_panels(load_records([folder]), SWEEP_KEY) if folder.is_dir() else []
    except UserError:
        panels = []
    bullets = []
    for panel in panels:
        fd = {p.x: p.mean for p in panel.series.get("fd", [])}
        control = {p.x: p.mean for p in panel.series.get("fd-random-split", [])}
        xs = [x for x in fd if x in control]
        if not xs:
            continue
        best = max((p for points in panel.series.values() for p in points), key=lambda p: p.mean)
        adjusted = sweep_holm(sweep_tests(load_records([folder])), panel.direction)
        significant = [x for x in xs if (p := adjusted.get(("fd", x))) is not None and p < SIGNIFICANCE]
        bullets.append(f"- {panel.direction}: fd − fd-random-split {span([fd[x] - control[x] for x in xs], '+.2f')} "
                       f"points (fd above at {sum(fd[x] > control[x] for x in xs)} of {len(xs)} values); fd − no-kd "
                       f"{span(list(fd.values()), '+.2f')}, significant after Holm at {len(significant)} of {len(xs)} "
                       f"values; the largest gain of any method over no-kd {best.mean:+.2f} ± {best.std:.2f}.")
    if bullets:
        lines += [f"### Across the `{SWEEP_KEY}` sweep (section 3)", "", *bullets, ""]
    return lines


RECORD_FOLDERS = ("runs", "runs-small-resnet", "sweeps/synth-av-shared")  # what sections 2 to 4 read


def teacher_check(root: Path) -> list[str]:
    """One line per records folder on whether the runs compared by seed distilled from one teacher per
    teacher key (records.teacher_outliers): teachers' weights are not committed, so runs made over
    sittings on two hosts can hold two teachers under one key, and a paired difference would then
    compare runs that did not share their teacher."""
    parts = []
    for folder in RECORD_FOLDERS:
        records = [r for r in load_records([root / folder]) if r.get("status") == "completed"
                   and not is_candidate(r)] if (root / folder).is_dir() else []
        if records:
            odd = teacher_outliers(records)
            parts.append(f"`{folder}/`: " + (f"{len(odd)} of {len(records)} records distilled from another teacher "
                                             "than most records with their teacher key (their pairs compare unlike "
                                             "teachers)" if odd else f"all {len(records)} records agree"))
    if not parts:
        return []
    return ["Teachers: the runs paired by seed below should share their teacher. Per folder, whether every "
            "record agrees with the others under its teacher key (weights' SHA-256, else the teacher's scores): "
            + "; ".join(parts) + ".", ""]


def write_report(root: Path, seeds: list[int]) -> Path:
    text = "\n".join([
        "# Does FD-CMKD's premise hold?", "",
        "Generated by `python leaderboard/analysis.py` from the run records and teacher analyses under this folder "
        "(issue 13); every number below is read from a record or from analysis/*.json. FD-CMKD's premise: along "
        "the channel axis of pooled features, the low-frequency part is similar across modalities and the "
        "high-frequency part is not.", "",
        *teacher_check(root),
        *similarity_section(root, seeds), *method_section(root), *sweep_section(root),
        *verdict_section(root, seeds)])
    path = root / "ANALYSIS.md"
    path.write_text(text.rstrip() + "\n")
    return path


def write_small_resnet_board(root: Path) -> Path | None:
    """ROOT/LEADERBOARD-small-resnet.md from ROOT/runs-small-resnet's records (the wide overview with marks,
    then a table per direction), titled with what it is: at the defaults, not tuned, and its seeds."""
    folder = root / "runs-small-resnet"
    records = load_records([folder]) if folder.is_dir() else []
    if not records:
        return None
    seeds = sorted({int(r["seed"]) for r in records if r.get("status") == "completed"})
    title = (f"# synth-av with small-resnet teachers and students: at the official defaults, not tuned, "
             f"seeds {', '.join(map(str, seeds))}\n\n"
             "Generated by `python leaderboard/analysis.py` from the records in `leaderboard/runs-small-resnet/` "
             "(suites/synth-av-small-resnet.yaml); ANALYSIS.md section 2 tests the same runs paired by seed.\n\n")
    path = root / "LEADERBOARD-small-resnet.md"
    path.write_text(title + render(records, "md", layout="wide") + "\n\n" + render(records, "md").rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(HERE), help="folder of the runs, analyses, figures and ANALYSIS.md")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-runs", action="store_true", help="no suites; measure the teachers the folders name")
    parser.add_argument("--report-only", action="store_true", help="only write ANALYSIS.md from analysis/*.json and records")
    parser.add_argument("--smoke", action="store_true", help="1 epoch, seed 0, tiny data: a check of the pipeline")
    parser.add_argument("--allow-dirty", action="store_true")
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="run only this part of step 1 (repeatable; step 2 then measures small-resnet's teachers "
                             "only, or none)")
    args = parser.parse_args(argv)
    only = tuple(dict.fromkeys(args.only)) if args.only else PARTS
    root = Path(args.root).resolve()
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    if args.smoke and root == HERE:
        print("analysis.py: --smoke writes tiny runs; give it another --root (e.g. /tmp/analysis-smoke)",
              file=sys.stderr)
        return 2
    if root == HERE and not (args.no_runs or args.report_only) and not args.allow_dirty and (files := uncommitted_files(HERE.parent, OUTPUTS)):
        print(f"analysis.py: the tree has uncommitted changes ({', '.join(files[:10])}); the records would not name "
              "the code they were made with: commit or stash them, or pass --allow-dirty", file=sys.stderr)
        return 2
    try:
        code = 0 if args.no_runs or args.report_only else run_all(root, seeds, args.jobs, args.device, args.smoke, only)
        if not args.report_only:
            measure_similarities(root, seeds, args.device, args.smoke, only)
        if board := write_small_resnet_board(root):
            print(f"wrote {board}", file=sys.stderr)
        print(f"wrote {write_report(root, seeds)}", file=sys.stderr)
    except UserError as error:
        print(f"analysis.py: {error}", file=sys.stderr)
        return 2
    if code:
        print("some runs failed; the tables leave them out", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
