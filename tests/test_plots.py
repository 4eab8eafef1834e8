"""Plots: the numbers drawn are the leaderboard's, heat-maps average seeds per grid cell, files are
real PNG and SVG, and a grid that mixes other settings is refused."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from cmkd_bench.errors import UserError
from cmkd_bench.reporting.leaderboard import summarize
from cmkd_bench.reporting.plots import bar_panels, heatmaps, plot_bars, plot_heatmaps, sweep_panels

from test_leaderboard import KD_VA, NO_KD_VA, TEACHERS_VA, main_fixture_records, make_record, seed_tests, write_records

# fd over w_low x w_high, two seeds each: test = 50 + 10 w_low + w_high + seed
W_LOW, W_HIGH = (0.5, 1.0, 2.0), (0.1, 1.0)


def grid_records() -> list[dict]:
    records = []
    for w_low in W_LOW:
        for w_high in W_HIGH:
            for seed in (0, 1):
                record = make_record("fd", seed, 50 + 10 * w_low + w_high + seed, 49.0,
                                     run_suffix=f"-{w_low}-{w_high}")
                record["hparams"] = {"w_low": w_low, "w_high": w_high, "split": 0.5}
                records.append(record)
    return records + [make_record("no-kd", 0, 55.0, 54.0)]  # no grid keys: left out


def test_bars_hold_the_leaderboard_numbers() -> None:
    panels = bar_panels(main_fixture_records())
    assert len(panels) == len(summarize(main_fixture_records()))
    va = next(p for p in panels if p.title.startswith("visual → audio") and "epochs=15" in p.title)
    kd = next(bar for bar in va.bars if bar.label == "kd")
    assert kd.mean == pytest.approx(statistics.mean(seed_tests(KD_VA)))
    assert kd.std == pytest.approx(statistics.stdev(seed_tests(KD_VA)))
    assert kd.mark == "†"
    assert va.no_kd == pytest.approx(statistics.mean(seed_tests(NO_KD_VA)))
    assert va.teacher == pytest.approx(statistics.mean(t for t, _ in TEACHERS_VA.values()))
    assert [bar.is_no_kd for bar in va.bars] == [True, False, False, False]


def test_heatmap_averages_seeds_in_each_cell() -> None:
    (heatmap,) = heatmaps(grid_records(), "w_low", "w_high")
    assert heatmap.x_values == list(W_LOW) and heatmap.y_values == list(W_HIGH)
    for y, w_high in enumerate(W_HIGH):
        for x, w_low in enumerate(W_LOW):
            assert heatmap.means[y][x] == pytest.approx(50 + 10 * w_low + w_high + 0.5)
            assert heatmap.counts[y][x] == 2


def test_heatmap_refuses_a_grid_that_varies_another_setting() -> None:
    records = grid_records()
    records[0]["hparams"]["split"] = 0.25
    with pytest.raises(UserError, match="differ in more than w_low and w_high"):
        heatmaps(records, "w_low", "w_high")
    with pytest.raises(UserError, match="no completed run has both"):
        heatmaps(records, "w_low", "T")


def test_plots_are_written_as_png_and_svg(tmp_path: Path) -> None:
    written = plot_bars(main_fixture_records(), tmp_path) + plot_heatmaps(grid_records(), "w_low", "w_high", tmp_path)
    assert sorted(p.name for p in written) == sorted([
        "bars-synth-av.png", "bars-synth-av.svg",
        "heatmap-fd-synth-av-visual2audio-w_low-w_high.png", "heatmap-fd-synth-av-visual2audio-w_low-w_high.svg"])
    for path in written:
        head = path.read_bytes()[:400]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in head


def test_the_same_records_give_the_same_bytes(tmp_path: Path) -> None:
    first = plot_bars(main_fixture_records(), tmp_path / "a")
    second = plot_bars(main_fixture_records(), tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_plot_command_writes_the_files(tmp_path: Path, capsys) -> None:
    from cmkd_bench.cli import main

    write_records(tmp_path / "runs", grid_records())
    with pytest.raises(SystemExit) as stopped:
        main(["plot", "heatmap", str(tmp_path / "runs"), "--x", "w_low", "--y", "w_high", "--method", "fd",
              "--output-dir", str(tmp_path / "plots")])
    assert stopped.value.code == 0, capsys.readouterr().err
    assert len(list((tmp_path / "plots").glob("heatmap-*.png"))) == 1


def test_bars_start_at_zero_keep_the_legend_off_the_bars_wrap_titles_and_explain_marks(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from cmkd_bench.reporting.plots import TITLE_WIDTH, _draw_bars, bars_notes, panel_title

    panels = bar_panels(main_fixture_records())
    panel = next(p for p in panels if any(bar.mark for bar in p.bars))
    figure, axis = plt.subplots()
    _draw_bars(axis, panel)
    assert axis.get_ylim()[0] == 0.0
    figure.canvas.draw()
    legend = axis.get_legend().get_window_extent()
    assert legend.x0 >= axis.get_window_extent().x1  # beside the axes, so it covers no bar
    long = panel.__class__(**{**panel.__dict__, "title": "x " * 200})
    assert all(len(line) <= TITLE_WIDTH for line in panel_title(long).splitlines())
    assert any("significantly better / worse than no-kd" in note for note in bars_notes(panels))
    plt.close(figure)


# -- sweep: gain over no-kd against one setting -----------------------------------------------------
SHARED = (0.0, 0.5, 1.0)


def sweep_records() -> list[dict]:
    """no-kd: 40 + 10 x + seed; kd: no-kd + 2 x + seed (gain 2x + seed); both directions, seeds 0 and 1."""
    records = []
    for direction in (("visual", "audio"), ("audio", "visual")):
        for x in SHARED:
            for seed in (0, 1):
                for method, test in (("no-kd", 40 + 10 * x + seed), ("kd", 40 + 12 * x + 2 * seed)):
                    record = make_record(method, seed, test, test, direction=direction, run_suffix=f"-x{x}")
                    record["data_options"] = {"shared": x, "noise": 1.6}
                    records.append(record)
    return records


def test_sweep_gains_are_paired_by_seed_and_setting() -> None:
    panels = sweep_panels(sweep_records(), "shared")
    assert [p.direction for p in panels] == ["audio → visual", "visual → audio"]
    for panel in panels:
        assert list(panel.series) == ["kd"]
        points = panel.series["kd"]
        assert [p.x for p in points] == list(SHARED) and all(p.n == 2 for p in points)
        for point in points:  # gains 2x + 0 and 2x + 1
            assert point.mean == pytest.approx(2 * point.x + 0.5)
            assert point.std == pytest.approx(statistics.stdev([0.0, 1.0]))
        assert [p.mean for p in panel.no_kd] == pytest.approx([40 + 10 * x + 0.5 for x in SHARED])


def test_sweep_refuses_missing_no_kd_mixed_protocols_and_single_values() -> None:
    records = sweep_records()
    with pytest.raises(UserError, match="no no-kd runs"):
        sweep_panels([r for r in records if r["method"] != "no-kd"], "shared")
    records[0]["data_options"]["noise"] = 2.0
    with pytest.raises(UserError, match="differ in more than shared"):
        sweep_panels(records, "shared")
    with pytest.raises(UserError, match="one value of 'shared'"):
        sweep_panels([r for r in sweep_records() if r["data_options"]["shared"] == 0.5], "shared")
    with pytest.raises(UserError, match="no completed run has the setting 'T'"):
        sweep_panels(sweep_records(), "T")


def test_plot_sweep_command_writes_one_figure_per_dataset(tmp_path: Path, capsys) -> None:
    from click.testing import CliRunner

    from cmkd_bench.cli import cli, main

    write_records(tmp_path / "runs", sweep_records())
    result = CliRunner().invoke(cli, ["plot", "sweep", str(tmp_path / "runs"), "--x", "shared",
                                      "--output-dir", str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig" / "sweep-synth-av-shared.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fig" / "sweep-synth-av-shared.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(SystemExit) as stopped:
        main(["plot", "sweep", str(tmp_path / "runs"), "--x", "T", "--output-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1 and "setting 'T'" in err
    assert not (tmp_path / "none").exists()
