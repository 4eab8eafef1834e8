"""leaderboard/analysis.py (ANALYSIS.md, issue 13): the report is built only from the files it reads
(freq-similarity JSON, run records), with the numbers those files hold; --smoke never writes into
leaderboard/. The end-to-end smoke run (tens of tiny runs) is marked slow."""

from __future__ import annotations

import importlib.util
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from scipy.stats import t as t_dist
from scipy.stats import ttest_rel

from cmkd_bench.artefacts.files import write_json_atomic
from cmkd_bench.reporting.analysis import FreqSimilarity
from cmkd_bench.reporting.freqsim import similarity_rows

from test_leaderboard import make_record, write_records

REPO = Path(__file__).resolve().parents[1]


def load_analysis():
    spec = importlib.util.spec_from_file_location("premise_analysis", REPO / "leaderboard" / "analysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_similarity(seed: int) -> FreqSimilarity:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(20, 16, generator=g) + 2, torch.randn(20, 16, generator=g) + 2
    return FreqSimilarity(dataset="synth-av", modalities=("visual", "audio"), backbones=("small-cnn", "small-cnn"),
                          feature_dim=16, split=0.5, cut=4, feature="post", on="test", samples=20,
                          conventions=("include", "exclude"), rows=similarity_rows(a, b, 4, seed=0),
                          dc_share={"visual": (0.5, 0.1), "audio": (0.4, 0.1)}, control_seed=0, compared="teachers",
                          sources=("k1", "k2"))


def test_the_report_holds_the_numbers_of_the_files_it_reads(tmp_path: Path) -> None:
    analysis = load_analysis()
    results = [fake_similarity(seed) for seed in (0, 1)]
    for seed, result in zip((0, 1), results):
        write_json_atomic(asdict(result), analysis.similarity_file(tmp_path, "synth-av", None, "post", seed))
    tests = {"no-kd": (50.0, 52.0), "fd": (49.0, 50.0), "fd-random-split": (51.0, 53.0)}
    write_records(tmp_path / "runs", [make_record(m, seed, value, value) for m, values in tests.items()
                                      for seed, value in enumerate(values)])
    sweep = []
    for x in (0.0, 1.0):
        for seed in (0, 1):
            for method, test in (("no-kd", 40 + 10 * x + seed), ("kd", 41 + 10 * x + 3 * seed)):
                record = make_record(method, seed, test, test, run_suffix=f"-x{x}")
                record["data_options"] = {"shared": x}
                sweep.append(record)
    write_records(tmp_path / "sweeps" / "synth-av-shared", sweep)

    text = analysis.write_report(tmp_path, [0, 1]).read_text()
    low = [r.value("low", "include") for r in results]
    assert f"{statistics.mean(low):.3f} ± {statistics.stdev(low):.3f}" in text
    assert "### synth-av · small-resnet · post" in text and "(not measured" in text  # no JSON for it
    # protocol v1 records: the defaults table only; fd − no-kd per seed -1, -2; fd-random-split − no-kd +1, +1;
    # fd − fd-random-split -2, -3 (no fd-no-align runs: its comparisons are absent)
    assert "(protocol v1 tuned nothing fairly)" in text
    row = next(line for line in text.splitlines() if line.startswith("| synth-av · small-cnn · visual → audio | top1"))
    assert row == "| synth-av · small-cnn · visual → audio | top1 | 51.00 ± 1.41 (n=2) | 49.50 ± 0.71 (n=2) | — | 52.00 ± 1.41 (n=2) |"
    p_fd = ttest_rel([49.0, 50.0], [50.0, 52.0]).pvalue
    p_versus = ttest_rel([49.0, 50.0], [51.0, 53.0]).pvalue
    holm = by_hand_holm([p_fd, 0.0, p_versus])  # a constant shift: p = 0, scipy's limit
    half = t_dist.ppf(0.975, 1) * statistics.stdev([-1, -2]) / 2 ** 0.5
    assert (f"| synth-av · small-cnn · visual → audio | fd − no-kd | 2 | -1.50 | [{-1.5 - half:+.2f}, {-1.5 + half:+.2f}] "
            f"| {p_fd:.3f} | {holm[0]:.3f} |") in text
    assert "| fd-random-split − no-kd | 2 | +1.00 | [+1.00, +1.00] | < 0.001 | < 0.001 ▲ |" in text
    assert f"| fd − fd-random-split | 2 | -2.50 |" in text and f"| {p_versus:.3f} | {holm[2]:.3f} |" in text
    p_kd = [ttest_rel([41 + 10 * x, 44 + 10 * x], [40 + 10 * x, 41 + 10 * x]).pvalue for x in (0.0, 1.0)]
    adjusted = by_hand_holm(p_kd)
    assert f"| kd | +2.00 ± 1.41 (p {adjusted[0]:.3f}) | +2.00 ± 1.41 (p {adjusted[1]:.3f}) |" in text  # gains 1, 3
    assert "at the defaults, 2 seeds" in text
    assert (tmp_path / "figures" / "sweep-synth-av-shared.png").is_file() and "![sweep](figures/sweep-synth-av-shared.png)" in text
    # section 4, from the same files: one configuration measured, one row of runs, no fd in the sweep
    high = [r.value("high", "include") for r in results]
    above = int(statistics.mean(low) > statistics.mean(high))
    assert (f"high band in {above} of 1 configurations (synth-av · small-cnn): low {statistics.mean(low):.3f}, "
            f"high {statistics.mean(high):.3f}.") in text
    no_dc = statistics.mean(r.value("low", "exclude") for r in results)
    dc_part = (statistics.mean(low) - no_dc) / statistics.mean(low)
    assert f"the low band's similarity is {no_dc:.3f}: the DC bin is {dc_part:.0%} of it." in text
    permuted = statistics.mean(r.value("low", "include", "permuted") for r in results)
    assert f"the low band keeps {permuted:.3f} ({permuted / statistics.mean(low):.0%} of its value)" in text
    assert ("- default, fd − no-kd (fd's gain): -1.50 points over 1 dataset · backbone · direction rows; "
            "significant above in 0 (none), below in 0 (none).") in text  # 2 seeds: p > 0.05 after Holm
    assert ("- default, fd-random-split − no-kd (with a random split): +1.00 points over 1 dataset · backbone · "
            "direction rows; significant above in 1 (synth-av · small-cnn · visual → audio), below in 0 (none).") in text
    assert "sweep (section 3)" not in text  # the sweep has no fd and fd-random-split to compare


def test_the_report_says_per_folder_whether_paired_runs_share_their_teacher(tmp_path: Path) -> None:
    analysis = load_analysis()
    same = [make_record(method, seed, 60.0 + seed, 59.0) for method in ("no-kd", "fd") for seed in (0, 1, 2)]
    write_records(tmp_path / "runs-small-resnet", same)
    mixed = [make_record(method, seed, 60.0 + seed, 59.0, run_suffix="-sweep") for method in ("no-kd", "fd")
             for seed in (0, 1, 2)]
    mixed[4]["teacher"]["metrics"]["val"] = 80.25  # fd seed 1: its teacher retrained elsewhere, same key
    write_records(tmp_path / "sweeps" / "synth-av-shared", mixed)
    (line,) = [line for line in analysis.teacher_check(tmp_path) if line]
    assert "`runs-small-resnet/`: all 6 records agree" in line
    assert ("`sweeps/synth-av-shared/`: 1 of 6 records distilled from another teacher than most records with their "
            "teacher key") in line
    assert "`runs/`" not in line  # no such folder: nothing said about it
    assert line in analysis.write_report(tmp_path, [0, 1, 2]).read_text()


def by_hand_holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment written out: the i-th smallest of m times (m - i), running maximum, at most 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def test_protocol_2_records_give_tuned_and_default_tables_with_holm(tmp_path: Path) -> None:
    from test_headline import reported, tuning_entry

    analysis = load_analysis()
    direction, seeds = ("visual", "audio"), (0, 1, 2, 3, 4)
    no_kd = [60.0, 61.0, 59.5, 60.5, 62.0]
    diffs = {("fd", "tuned"): [1.2, 0.8, 1.5, 1.0, 1.1], ("fd", "default"): [0.3, -0.2, 0.5, 0.1, 0.0],
             ("fd-no-align", "tuned"): [1.1, 0.9, 1.2, 1.3, 0.8], ("fd-no-align", "default"): [0.2, 0.1, -0.1, 0.4, 0.3],
             ("fd-random-split", "default"): [0.4, 0.0, 0.2, 0.1, 0.3]}
    records = []
    for seed, base in zip(seeds, no_kd):
        record = reported("no-kd", direction, seed, base, {}, suffix="-recipe")
        record["tuning"] = [tuning_entry("no-kd", direction, {"lr": 0.05, "weight_decay": 0.0005})]
        records.append(record)
    for (method, setting), per_seed in diffs.items():
        for seed, base, diff in zip(seeds, no_kd, per_seed):
            hparams = {"w_low": 0.1} if setting == "tuned" else {}
            records.append(reported(method, direction, seed, base + diff, hparams,
                                    selected_by=(method,) if setting == "tuned" else (), suffix=f"-{setting}"))
    candidate = reported("fd", direction, 1000, 99.0, {"w_low": 10.0}, suffix="-candidate")
    candidate["protocol"]["role"] = "candidate"  # a selection run: never a row
    write_records(tmp_path / "runs", records + [candidate])
    text = "\n".join(analysis.method_section(tmp_path))

    def expected(setting: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, float]]:
        values = {"no-kd": no_kd, **{m: [b + d for b, d in zip(no_kd, diffs[(m, s)])] for m, s in diffs if s == setting}}
        present = [(a, b) for a, b in pairs if a in values and b in values]
        p = [ttest_rel(values[a], values[b]).pvalue for a, b in present]
        return dict(zip(present, zip(p, by_hand_holm(p))))

    tuned_part, default_part = text.split("### At the official defaults")
    assert "records of protocol v2" in tuned_part
    assert "### Tuned: each method's selected configuration" in tuned_part and "99.0" not in text
    for part, setting in ((tuned_part, "tuned"), (default_part, "default")):
        for (a, b), (p, p_holm) in expected(setting, list(analysis.CONTRASTS)).items():
            mark = " ▲" if p_holm < 0.05 else ""
            assert f"| {a} − {b} | 5 |" in part and f"| {p_text(p)} | {p_text(p_holm)}{mark} |" in part, (a, b, setting)
    assert "fd-random-split − no-kd" not in tuned_part  # fd-random-split has no tuned runs here
    fd_tuned = [b + d for b, d in zip(no_kd, diffs[("fd", "tuned")])]
    assert f"| {statistics.mean(fd_tuned):.2f} ± {statistics.stdev(fd_tuned):.2f} (n=5) |" in tuned_part


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def test_smoke_refuses_to_write_into_the_leaderboard(capsys) -> None:
    assert load_analysis().main(["--smoke"]) == 2
    assert "another --root" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_runs_end_to_end(tmp_path: Path) -> None:
    analysis = load_analysis()
    assert analysis.main(["--smoke", "--root", str(tmp_path), "--device", "cpu"]) == 0
    text = (tmp_path / "ANALYSIS.md").read_text()
    assert "(not measured" not in text and "(no sweep yet" not in text and "(no runs yet)" not in text
    assert len(list((tmp_path / "analysis").glob("freq-similarity-*.json"))) == 3 * 2


def test_the_parts_keep_their_suite_files_data_and_only_chooses_them(tmp_path: Path) -> None:
    analysis = load_analysis()
    both = analysis.suites(tmp_path, [0, 1, 2, 3, 4], "cpu", smoke=False)
    assert [s.out for s in both] == [str(tmp_path / "runs-small-resnet"), str(tmp_path / "sweeps" / "synth-av-shared")]
    resnet = both[0]
    # the suite file's enlarged evaluation splits (its teachers are the ones the table used), 5 seeds, fd's controls
    assert [(e.name, sorted(e.sets)) for e in resnet.datasets] == [("synth-av", ["test=5000", "val=2000"])]
    assert list(resnet.seeds) == [0, 1, 2, 3, 4] and [m.name for m in resnet.methods] == list(analysis.FD_METHODS)
    only = analysis.suites(tmp_path, [0], "cpu", smoke=False, only=("small-resnet",))
    assert [s.out for s in only] == [str(tmp_path / "runs-small-resnet")]
    assert analysis.config_sets("synth-av", "runs-small-resnet", smoke=False) == tuple(resnet.datasets[0].sets)
    assert analysis.config_sets("synth-av", "runs", smoke=False) == ()


def test_the_small_resnet_board_says_it_is_untuned_and_its_seeds(tmp_path: Path) -> None:
    analysis = load_analysis()
    assert analysis.write_small_resnet_board(tmp_path) is None  # no records, no file
    write_records(tmp_path / "runs-small-resnet", [make_record(m, seed, 50.0 + seed, 50.0) for m in ("no-kd", "fd")
                                                   for seed in (0, 1, 3)])
    text = analysis.write_small_resnet_board(tmp_path).read_text()
    assert text.splitlines()[0] == ("# synth-av with small-resnet teachers and students: at the official defaults, "
                                    "not tuned, seeds 0, 1, 3")
    assert "| fd |" in text and "| no-kd |" in text


def test_only_measures_the_small_resnet_teachers_alone_whatever_the_order(tmp_path: Path, monkeypatch) -> None:
    analysis = load_analysis()
    measured: list[str] = []

    def fake(request, **_):
        measured.append(Path(request.out).name)
        return fake_similarity(request.seed)

    monkeypatch.setattr(analysis, "freq_similarity", fake)
    monkeypatch.setattr(analysis, "plot_freq_similarity", lambda *args: None)

    def folders(only):
        measured.clear()
        analysis.measure_similarities(tmp_path, [0], "cpu", smoke=False, only=only)
        return sorted(set(measured))

    assert folders(("small-resnet",)) == ["runs-small-resnet"]
    assert folders(("sweep",)) == []
    # both parts, in either order, are every configuration
    assert folders(("sweep", "small-resnet")) == folders(("small-resnet", "sweep")) == ["runs", "runs-small-resnet"]
