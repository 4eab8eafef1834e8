"""Plots: the numbers drawn are the leaderboard's, heat-maps average seeds per grid cell, files are
real PNG, SVG and PDF, the same bytes for the same records, bars zoom to the data, --highlight and the
palette colour every figure, and a grid that mixes other settings is refused."""

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


def test_bars_zoom_to_the_data_with_reference_lines_a_legend_above_and_no_empty_strips() -> None:
    from cmkd_bench.reporting.plots import PALETTE, TITLE_WIDTH, bars_figure, bars_notes, panel_title, pyplot

    panels = bar_panels(main_fixture_records())
    panel = next(p for p in panels if p.title.startswith("visual → audio") and "epochs=15" in p.title)
    figure = bars_figure("synth-av", [panel])
    axis = figure.axes[0]
    # from zero, the 1-3 point gaps vanish: the axis spans the error bars and the reference lines only
    low = min([b.mean - b.std for b in panel.bars] + [panel.no_kd, panel.teacher])
    high = max([b.mean + b.std for b in panel.bars] + [panel.no_kd, panel.teacher])
    margin = max(0.5, 0.06 * (high - low))
    assert axis.get_ylim() == pytest.approx((low - margin, high + 2 * margin)) and low - margin > 0
    assert [patch.get_y() for patch in axis.patches] == pytest.approx([low - margin] * len(panel.bars))
    assert [patch.get_y() + patch.get_height() for patch in axis.patches] == pytest.approx([b.mean for b in panel.bars])
    lines = {line.get_label(): (line.get_ydata()[0], line.get_color()) for line in axis.get_lines()
             if line.get_label() in ("no-KD", "teacher (own modality)")}
    assert lines == {"no-KD": (pytest.approx(panel.no_kd), PALETTE.reference),
                     "teacher (own modality)": (pytest.approx(panel.teacher), PALETTE.teacher)}
    assert axis.get_xlim() == (-0.6, len(panel.bars) - 0.4)  # no empty strip beside the first and last bar
    figure.canvas.draw()
    (legend,) = figure.legends
    assert legend.get_window_extent().y0 >= axis.get_window_extent().y1  # above the panel: it covers no bar
    assert legend.get_title().get_text().startswith("synth-av: test metric per method")
    long = panel.__class__(**{**panel.__dict__, "title": "x " * 200})
    assert all(len(line) <= TITLE_WIDTH for line in panel_title(long).splitlines())
    assert any("significantly better / worse than no-kd" in note for note in bars_notes(panels))
    pyplot().close(figure)


def test_highlight_gives_the_named_methods_accents_and_mutes_the_rest() -> None:
    from cmkd_bench.reporting.plots import PALETTE, bars_figure, highlight_colours, pyplot

    panel = next(p for p in bar_panels(main_fixture_records())
                 if p.title.startswith("visual → audio") and "epochs=15" in p.title)
    bars = [(bar.method, bar.label) for bar in panel.bars]
    assert [bar.label for bar in panel.bars] == ["no-kd", "kd (T=2, alpha=0.9)", "kd", "ftkd"]

    def facecolours(highlight: list[str]) -> list[str]:
        figure = bars_figure("synth-av", [panel], highlight_colours(highlight, bars))
        colours = [matplotlib_hex(patch.get_facecolor()) for patch in figure.axes[0].patches]
        pyplot().close(figure)
        return colours

    accent, second = PALETTE.accents[:2]
    assert facecolours([]) == [PALETTE.no_kd, PALETTE.bar, PALETTE.bar, PALETTE.bar]
    assert facecolours(["kd"]) == [PALETTE.no_kd, accent, accent, PALETTE.muted]  # a method: all its rows
    assert facecolours(["kd (T=2, alpha=0.9)", "ftkd"]) == [PALETTE.no_kd, accent, PALETTE.muted, second]
    with pytest.raises(UserError, match=r"--highlight 'fdd': no method or row of that name .* ftkd, kd, no-kd$"):
        highlight_colours(["fdd"], bars)


def matplotlib_hex(rgba) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgba).upper()


def test_every_figure_takes_its_colours_from_the_palette(tmp_path: Path, monkeypatch) -> None:
    from cmkd_bench.reporting import plots

    palette = plots.Palette(bar="#123456", no_kd="#654321", series=("#ABCDEF",), colormap="magma")
    monkeypatch.setattr(plots, "PALETTE", palette)
    seen: list = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, *args, **kwargs: seen.append(figure) or [])
    plots.plot_bars(main_fixture_records(), tmp_path)
    plots.plot_heatmaps(grid_records(), "w_low", "w_high", tmp_path)
    plots.plot_sweep(sweep_records(), "shared", tmp_path)
    bars, heatmap, sweep = seen
    assert {matplotlib_hex(patch.get_facecolor()) for axis in bars.axes for patch in axis.patches} == \
        {"#123456", "#654321"}
    assert heatmap.axes[0].images[0].get_cmap().name == "magma"
    (kd,) = [container for container in sweep.axes[0].containers if container.get_label() == "kd"]
    assert kd.lines[0].get_color() == "#ABCDEF"
    for figure in seen:
        plots.pyplot().close(figure)


def test_pdf_is_written_on_request_and_byte_stable(tmp_path: Path) -> None:
    from cmkd_bench.reporting.plots import DEFAULT_FORMATS, FIGURE_FORMATS

    assert DEFAULT_FORMATS == ("png", "svg") and "pdf" in FIGURE_FORMATS
    first = plot_bars(main_fixture_records(), tmp_path / "a", formats=("pdf",), highlight=["kd"])
    assert [path.name for path in first] == ["bars-synth-av.pdf"]
    data = first[0].read_bytes()
    assert data.startswith(b"%PDF-") and b"/CreationDate" not in data and b"/Type3" not in data
    second = plot_bars(main_fixture_records(), tmp_path / "b", formats=("pdf",), highlight=["kd"])
    assert second[0].read_bytes() == data
    with pytest.raises(UserError, match="unknown figure format 'jpg'; choose among png, svg, pdf"):
        plot_bars(main_fixture_records(), tmp_path / "c", formats=("jpg",))
    assert not (tmp_path / "c").exists()


def test_plot_command_refuses_bad_format_highlight_and_output_in_one_line(tmp_path: Path, capsys) -> None:
    from cmkd_bench.cli import main

    write_records(tmp_path / "runs", main_fixture_records())
    (tmp_path / "file").write_text("not a folder")
    cases = [(["--format", "jpg"], "'jpg' is not one of 'png', 'svg', 'pdf'"),
             (["--highlight", "fdd"], "--highlight 'fdd': no method or row of that name"),
             (["--output-dir", str(tmp_path / "file" / "sub")], "not a folder")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as stopped:
            main(["plot", "bars", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
        assert "Traceback" not in err and not list((tmp_path / "out").glob("*.*"))
    with pytest.raises(SystemExit) as stopped:
        main(["plot", "bars", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "out"), "--format", "pdf",
              "--highlight", "kd"])
    assert stopped.value.code == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["bars-synth-av.pdf"]


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
