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
    # fd − no-kd per seed: -1, -2; fd − fd-random-split: -2, -3
    row = next(line for line in text.splitlines() if line.startswith("| synth-av · small-cnn · visual → audio"))
    assert row.endswith(f"| {-1.5:.2f} ± {statistics.stdev([-1, -2]):.2f} | {1.0:.2f} ± 0.00 | "
                        f"{-2.5:.2f} ± {statistics.stdev([-2, -3]):.2f} |")
    assert "| kd | +2.00 ± 1.41 | +2.00 ± 1.41 |" in text  # gains 1 + 2 seed: 1 and 3
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
    assert ("-2.50 points over 1 dataset · backbone · direction rows; separated above in 0, below in 1; the largest, "
            f"-2.50 ± {statistics.stdev([-2, -3]):.2f} (synth-av · small-cnn · visual → audio)") in text
    assert ("fd − no-kd: -1.50 points; separated above in 0 of 1 rows (none), below in 1 "
            "(synth-av · small-cnn · visual → audio)") in text
    assert "sweep (section 3)" not in text  # the sweep has no fd and fd-random-split to compare


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
