"""Leaderboard tests: every expected number is recomputed here from the fixture values."""

from __future__ import annotations

import csv
import os
import io
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cmkd_bench.errors import UserError
from cmkd_bench.reporting.leaderboard import FORMATS, TableData, load_records, print_leaderboard, render, summarize

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboard"

# Per-seed (test, test_last) for the main fixture, visual -> audio, recipe of 15 epochs.
NO_KD_VA = [(60.0, 59.0), (61.5, 61.0), (59.7, 59.5)]
KD_VA = [(64.2, 63.0), (65.0, 64.8), (63.1, 62.9)]
KD_TUNED_VA = [(66.0, 65.5), (66.4, 66.0), (65.1, 65.3)]  # kd with T=2, alpha=0.9: the best
FINETUNE_VA = (62.0, 61.0)  # one seed of a method that fine-tunes its teacher
TEACHERS_VA = {"t-visual-s0": (80.0, 79.5), "t-visual-s1": (81.0, 80.0), "t-visual-s2": (79.0, 78.5)}
STALE_KD_SEED1 = (10.0, 9.0)  # an older repeat of kd seed 1: must be dropped
# audio -> visual
NO_KD_AV = [(40.0, 39.0), (42.0, 41.0), (41.0, 40.5)]
KD_AV = [(43.0, 42.0), (44.5, 44.0), (42.5, 42.0)]
TEACHERS_AV = {"t-audio-s0": (55.0, 54.0), "t-audio-s1": (56.0, 55.5), "t-audio-s2": (54.0, 53.0)}
LONG_RECIPE_KD = (70.0, 69.0)  # visual -> audio, 30 epochs: a table of its own
FAILED_ERROR = "loss became NaN at step 37"

VA_TITLE = "synth-av · visual → audio · top1 (%) · student small-cnn, teacher small-cnn"


def make_record(method: str, seed: int, test: float | None, last: float | None, *,
                direction: tuple[str, str] = ("visual", "audio"), teacher_key: str | None = None,
                teacher_metrics: tuple[float, float] = (80.0, 79.5), epochs: int = 15,
                hparams_changed: dict[str, Any] | None = None, created: str = "2026-11-26T10:00:00Z",
                status: str = "completed", error: str | None = None, trained_by_method: bool = False,
                run_suffix: str = "") -> dict[str, Any]:
    teacher_modality, student_modality = direction
    run_id = f"{method}-synth-av-{teacher_modality}2{student_modality}-s{seed}-e{epochs}{run_suffix}"
    return {
        "schema": 1, "run_id": run_id, "status": status, "error": error, "method": method,
        "dataset": "synth-av", "task": "classification",
        "student_modality": student_modality, "teacher_modality": teacher_modality,
        "student_backbone": "small-cnn", "teacher_backbone": "small-cnn", "seed": seed,
        "hparams": {}, "hparams_changed": hparams_changed or {}, "data_options": {"shared": 0.5},
        "config": {"recipe": {"epochs": epochs, "batch_size": 64, "lr": 0.05}},
        "metric": "top1",
        "metrics": None if status == "failed" else {"val_best": test, "test": test, "test_last": last, "best_epoch": 3},
        "teacher": {
            "modality": teacher_modality, "backbone": "small-cnn",
            "key": teacher_key or f"t-{teacher_modality}-s{seed}", "checkpoint": "teacher.pt",
            "metrics": {"val": teacher_metrics[0], "test": teacher_metrics[0], "test_last": teacher_metrics[1]},
            "trained_by_method": trained_by_method,
        },
        "device": "cpu", "versions": {"python": "3.11.7"}, "git_revision": "abc123",
        "wall_time_s": 1.0, "train_steps": 10, "steps_per_s": 10.0, "created": created,
    }


def write_records(runs_dir: Path, records: list[dict[str, Any]]) -> None:
    for record in records:
        run_dir = runs_dir / record["run_id"]
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(json.dumps(record), encoding="utf-8")


def main_fixture_records() -> list[dict[str, Any]]:
    records = []
    for direction, no_kd, kd, teachers in (
        (("visual", "audio"), NO_KD_VA, KD_VA, TEACHERS_VA),
        (("audio", "visual"), NO_KD_AV, KD_AV, TEACHERS_AV),
    ):
        teacher_values = list(teachers.values())
        for seed in range(3):
            common = dict(direction=direction, teacher_metrics=teacher_values[seed])
            records.append(make_record("no-kd", seed, *no_kd[seed], **common))
            records.append(make_record("kd", seed, *kd[seed], **common))
    for seed in range(3):
        records.append(make_record("kd", seed, *KD_TUNED_VA[seed], teacher_metrics=list(TEACHERS_VA.values())[seed],
                                   hparams_changed={"T": 2.0, "alpha": 0.9}, run_suffix="-tuned"))
    # Sorts after the real kd seed 1 on disk, so only `created` can tell that it is the older one.
    records.append(make_record("kd", 1, *STALE_KD_SEED1, created="2026-11-20T09:00:00Z", run_suffix="-zz-old"))
    records.append(make_record("ftkd", 0, *FINETUNE_VA, teacher_key="t-visual-finetuned",
                               teacher_metrics=(99.0, 98.0), trained_by_method=True))
    records.append(make_record("crd", 2, None, None, status="failed", error=FAILED_ERROR))
    records.append(make_record("kd", 0, *LONG_RECIPE_KD, epochs=30))
    return records


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    write_records(runs, main_fixture_records())
    # A teacher cache holds teacher.json, which is not a run record and must be skipped.
    cache = runs / "teachers" / "t-visual-s0"
    cache.mkdir(parents=True)
    (cache / "teacher.json").write_text(json.dumps({"key": "t-visual-s0"}), encoding="utf-8")
    return runs


@pytest.fixture
def tables(runs_dir: Path) -> list[TableData]:
    return summarize(load_records([runs_dir]))


def table_titled(tables: list[TableData], prefix: str, epochs: int = 15) -> TableData:
    matches = [t for t in tables if t.title.startswith(prefix) and t.recipe["epochs"] == epochs]
    assert len(matches) == 1, [t.title for t in tables]
    return matches[0]


def row_labelled(table: TableData, label: str):
    matches = [row for row in table.rows if row.label == label]
    assert len(matches) == 1, [row.label for row in table.rows]
    return matches[0]


def seed_tests(pairs: list[tuple[float, float]]) -> list[float]:
    return [test for test, _ in pairs]


def seed_lasts(pairs: list[tuple[float, float]]) -> list[float]:
    return [last for _, last in pairs]


def mean_std_text(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


# --- loading


def test_load_records_reads_every_result_json_and_skips_teacher_caches(runs_dir: Path) -> None:
    records = load_records([runs_dir])
    assert len(records) == len(main_fixture_records())
    assert all("status" in record for record in records)


def test_load_records_accepts_a_single_file_and_counts_overlapping_paths_once(runs_dir: Path) -> None:
    one = next(runs_dir.rglob("result.json"))
    assert len(load_records([one])) == 1
    assert len(load_records([runs_dir, one])) == len(main_fixture_records())


def test_missing_path_raises_user_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere"):
        load_records([missing])


def test_corrupt_json_raises_user_error_naming_the_file(runs_dir: Path) -> None:
    broken = runs_dir / "broken-run" / "result.json"
    broken.parent.mkdir()
    broken.write_text('{"run_id": "x", ', encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_records([runs_dir])
    message = str(caught.value)
    assert str(broken) in message and "JSON" in message
    assert "\n" not in message


def test_record_missing_keys_raises_user_error_naming_file_and_keys(tmp_path: Path) -> None:
    record = make_record("kd", 0, 50.0, 49.0)
    del record["seed"], record["teacher_modality"]
    write_records(tmp_path, [record])
    with pytest.raises(UserError) as caught:
        load_records([tmp_path])
    message = str(caught.value)
    assert "result.json" in message and "seed" in message and "teacher_modality" in message


def test_completed_record_without_test_metric_raises_user_error(tmp_path: Path) -> None:
    record = make_record("kd", 0, 50.0, 49.0)
    record["metrics"] = None
    write_records(tmp_path, [record])
    with pytest.raises(UserError, match="metrics.test"):
        load_records([tmp_path])


def test_empty_runs_dir_gives_no_records(tmp_path: Path) -> None:
    assert load_records([tmp_path]) == []


# --- grouping and rows


def test_directions_and_recipes_make_separate_tables(tables: list[TableData]) -> None:
    assert len(tables) == 3
    long_recipe = table_titled(tables, "synth-av · visual → audio", epochs=30)
    # Only one of the four visual -> audio kd records was trained for 30 epochs.
    assert row_labelled(long_recipe, "kd").values == [LONG_RECIPE_KD[0]]
    assert row_labelled(table_titled(tables, "synth-av · visual → audio"), "kd").n == 3


def test_titles_name_the_setting_that_differs_between_tables(tables: list[TableData]) -> None:
    titles = sorted(table.title for table in tables)
    assert titles == sorted([
        f"{VA_TITLE} · recipe epochs=15",
        f"{VA_TITLE} · recipe epochs=30",
        "synth-av · audio → visual · top1 (%) · student small-cnn, teacher small-cnn · recipe epochs=15",
    ])


def test_title_has_no_settings_when_all_tables_share_them() -> None:
    records = [make_record("kd", 0, 50.0, 49.0), make_record("kd", 0, 40.0, 39.0, direction=("audio", "visual"))]
    assert [t.title for t in summarize(records)][1] == VA_TITLE


def test_records_with_other_data_options_are_never_averaged_together() -> None:
    shared_half = make_record("kd", 0, 50.0, 49.0)
    shared_most = make_record("kd", 1, 90.0, 89.0)
    shared_most["data_options"] = {"shared": 0.8}
    tables = summarize([shared_half, shared_most])
    assert sorted(t.title for t in tables) == [f"{VA_TITLE} · data shared=0.5", f"{VA_TITLE} · data shared=0.8"]
    assert sorted(row_labelled(t, "kd").values for t in tables) == [[50.0], [90.0]]


def test_row_order_is_teacher_then_no_kd_then_methods_by_mean_test(tables: list[TableData]) -> None:
    labels = [row.label for row in table_titled(tables, "synth-av · visual → audio").rows]
    assert labels == ["teacher (visual, small-cnn)", "no-kd", "kd (T=2, alpha=0.9)", "kd", "ftkd"]


def test_method_row_mean_std_and_last_match_seed_values(tables: list[TableData]) -> None:
    kd = row_labelled(table_titled(tables, "synth-av · audio → visual"), "kd")
    assert kd.values == seed_tests(KD_AV)
    assert kd.mean == pytest.approx(statistics.mean(seed_tests(KD_AV)))
    assert kd.std == pytest.approx(statistics.stdev(seed_tests(KD_AV)))
    assert kd.mean_last == pytest.approx(statistics.mean(seed_lasts(KD_AV)))
    assert kd.std_last == pytest.approx(statistics.stdev(seed_lasts(KD_AV)))
    assert kd.n == 3


def test_duplicated_seed_keeps_the_most_recent_run(tables: list[TableData]) -> None:
    kd = row_labelled(table_titled(tables, "synth-av · visual → audio"), "kd")
    assert kd.values == seed_tests(KD_VA)
    assert STALE_KD_SEED1[0] not in kd.values


def test_changed_hparams_make_their_own_row(tables: list[TableData]) -> None:
    tuned = row_labelled(table_titled(tables, "synth-av · visual → audio"), "kd (T=2, alpha=0.9)")
    assert tuned.method == "kd" and tuned.hparams == {"T": 2.0, "alpha": 0.9}
    assert tuned.mean == pytest.approx(statistics.mean(seed_tests(KD_TUNED_VA)))


def test_delta_is_against_the_no_kd_mean_of_the_same_table(tables: list[TableData]) -> None:
    va = table_titled(tables, "synth-av · visual → audio")
    no_kd_mean = statistics.mean(seed_tests(NO_KD_VA))
    assert row_labelled(va, "kd").delta == pytest.approx(statistics.mean(seed_tests(KD_VA)) - no_kd_mean)
    assert row_labelled(va, "ftkd").delta == pytest.approx(FINETUNE_VA[0] - no_kd_mean)
    assert row_labelled(va, "no-kd").delta is None
    assert row_labelled(va, "teacher (visual, small-cnn)").delta is None


def test_delta_is_blank_without_a_no_kd_row(tables: list[TableData]) -> None:
    long_recipe = table_titled(tables, "synth-av · visual → audio", epochs=30)
    assert row_labelled(long_recipe, "kd").delta is None


def test_teacher_row_averages_distinct_teachers_not_fine_tuned_ones(tables: list[TableData]) -> None:
    teacher = table_titled(tables, "synth-av · visual → audio").rows[0]
    assert teacher.kind == "teacher"
    # Three distinct keys among 11 records; the fine-tuned 99.0 teacher is left out.
    assert sorted(teacher.values) == sorted(test for test, _ in TEACHERS_VA.values())
    assert teacher.n == 3
    assert teacher.mean == pytest.approx(statistics.mean(test for test, _ in TEACHERS_VA.values()))
    assert teacher.mean_last == pytest.approx(statistics.mean(last for _, last in TEACHERS_VA.values()))
    assert teacher.sources == sorted(TEACHERS_VA)


def test_best_is_the_top_method_row_never_the_teacher(tables: list[TableData]) -> None:
    va = table_titled(tables, "synth-av · visual → audio")
    assert [row.label for row in va.rows if row.is_best] == ["kd (T=2, alpha=0.9)"]
    assert va.rows[0].mean > max(row.mean for row in va.rows[1:])  # the teacher is higher yet not best


def test_no_kd_can_be_best() -> None:
    records = [make_record("no-kd", 0, 60.0, 59.0), make_record("kd", 0, 55.0, 54.0)]
    rows = summarize(records)[0].rows
    assert [row.label for row in rows if row.is_best] == ["no-kd"]


def test_single_seed_shows_no_spread(tables: list[TableData], runs_dir: Path) -> None:
    long_recipe = table_titled(tables, "synth-av · visual → audio", epochs=30)
    kd = row_labelled(long_recipe, "kd")
    assert (kd.mean, kd.std, kd.n) == (LONG_RECIPE_KD[0], None, 1)  # one seed: no spread to estimate
    text = render(load_records([runs_dir]), "md")
    assert f"| **kd** | **{LONG_RECIPE_KD[0]:.2f}** |" in text and "± 0.00" not in text


# --- formats


def test_markdown_golden_for_the_small_fixture() -> None:
    records = load_records([FIXTURES / "small"])
    expected = (
        "### synth-av · visual → audio · top1 (%) · student small-cnn, teacher small-cnn\n"
        "\n"
        "| Method | test | test@last | seeds (n) | Δ vs no-KD |\n"
        "|---|---:|---:|---:|---:|\n"
        "| teacher (visual, small-cnn) | 70.00 | 69.50 | 1 |  |\n"
        "| no-kd | 51.00 ± 1.41 | 50.00 ± 1.41 | 2 |  |\n"
        "| **kd** | **55.75 ± 1.06** | **54.50 ± 0.71** | **2** | **+4.75** |\n"
        "\n"
        "### failed runs\n"
        "\n"
        "| run | method | dataset | direction | seed | error |\n"
        "|---|---|---|---|---:|---|\n"
        "| kd-synth-av-visual2audio-s2-0c0c0c0c | kd | synth-av | visual → audio | 2 "
        "| CUDA out of memory \\| retry with a smaller batch |\n"
    )
    assert render(records, "md") == expected


def test_markdown_shows_mean_std_and_delta_strings(runs_dir: Path) -> None:
    text = render(load_records([runs_dir]), "md")
    delta = statistics.mean(seed_tests(KD_VA)) - statistics.mean(seed_tests(NO_KD_VA))
    expected_kd = (f"| kd | {mean_std_text(seed_tests(KD_VA))} | {mean_std_text(seed_lasts(KD_VA))} "
                   f"| 3 | {delta:+.2f} |")
    assert expected_kd in text.splitlines()
    assert text.count("### ") == 4  # three tables and the failed runs


def test_failed_runs_are_listed_with_their_error(runs_dir: Path) -> None:
    records = load_records([runs_dir])
    failed_line = f"| crd-synth-av-visual2audio-s2-e15 | crd | synth-av | visual → audio | 2 | {FAILED_ERROR} |"
    assert failed_line in render(records, "md").splitlines()
    for fmt in ("rich", "latex"):
        text = render(records, fmt)
        assert "failed runs" in text and "crd" in text and FAILED_ERROR in text


def test_csv_parses_back_with_the_summary_values(runs_dir: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(render(load_records([runs_dir]), "csv"))))
    assert len(rows) == 5 + 3 + 2  # rows of the three tables, teacher rows included
    assert {"dataset", "direction", "hparams", "mean", "std", "n", "is_best", "kind"} <= set(rows[0])
    va = [row for row in rows if row["direction"] == "visual->audio" and '"epochs": 15' in row["recipe"]]
    kd = next(row for row in va if row["method"] == "kd" and row["hparams"] == "{}")
    assert float(kd["mean"]) == pytest.approx(statistics.mean(seed_tests(KD_VA)), abs=1e-4)
    assert float(kd["std"]) == pytest.approx(statistics.stdev(seed_tests(KD_VA)), abs=1e-4)
    assert float(kd["delta_vs_nokd"]) == pytest.approx(
        statistics.mean(seed_tests(KD_VA)) - statistics.mean(seed_tests(NO_KD_VA)), abs=1e-4)
    assert kd["n"] == "3" and kd["kind"] == "method" and kd["is_best"] == "false"
    tuned = next(row for row in va if json.loads(row["hparams"] or "{}") == {"T": 2.0, "alpha": 0.9})
    assert tuned["is_best"] == "true"
    assert [row["kind"] for row in va][0] == "teacher"
    assert next(row for row in va if row["method"] == "no-kd")["delta_vs_nokd"] == ""


def test_latex_uses_booktabs_and_escapes_labels() -> None:
    records = [
        make_record("no-kd", 0, 50.0, 49.0),
        make_record("feat_kd", 0, 52.0, 51.0, hparams_changed={"beta_1": 0.5, "mix%": 1}),
        make_record("kd", 1, None, None, status="failed", error="100% & #1 failed"),
    ]
    text = render(records, "latex")
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrrr}"):
        assert command in text
    # only the winning numbers are bold (test and its gap to no-kd), not the name nor the seed count
    assert r"feat\_kd (beta\_1=0.5, mix\%=1) & \textbf{\boldmath 52.00} & 51.00 & 1 & \textbf{\boldmath +2.00} \\" in text
    assert r"$\Delta$" in text and r"visual $\rightarrow$ audio" in text
    # a failed run is no result for a paper's table: listed in comments, after the table
    assert "\n% kd-synth-av-visual2audio-s1-e15 | kd | synth-av | visual → audio | 1 | 100% & #1 failed\n" in text
    assert text.count(r"\begin{table}") == 1


def test_unknown_format_raises_user_error_listing_formats(runs_dir: Path) -> None:
    records = load_records([runs_dir])
    with pytest.raises(UserError) as caught:
        render(records, "docx")  # (html became a format with issue 6)
    assert all(fmt in str(caught.value) for fmt in FORMATS)
    with pytest.raises(UserError):
        print_leaderboard(records, "docx")


def test_no_completed_runs_gives_a_message_and_still_lists_failures() -> None:
    failed = make_record("crd", 2, None, None, status="failed", error=FAILED_ERROR)
    text = render([failed], "md", paths=["runs/"])
    assert text.splitlines()[0] == "No completed runs found under runs/; nothing to tabulate."
    assert FAILED_ERROR in text
    assert "No completed runs found" in render([], "rich")
    assert render([], "csv").strip().startswith("dataset,task,direction")


def test_print_leaderboard_writes_the_file(runs_dir: Path, tmp_path: Path) -> None:
    records = load_records([runs_dir])
    out = tmp_path / "board.md"
    console = Console(file=io.StringIO())
    print_leaderboard(records, "md", out, console=console)
    assert out.read_text(encoding="utf-8") == render(records, "md")
    assert str(out) in console.file.getvalue()


def test_print_leaderboard_rich_bolds_the_best_row(runs_dir: Path) -> None:
    console = Console(file=io.StringIO(), record=True, force_terminal=True, color_system="standard", width=140)
    print_leaderboard(load_records([runs_dir]), "rich", console=console)
    bold_lines = [line for line in console.export_text(styles=True, clear=False).splitlines() if "\x1b[1m" in line]
    assert any("kd (T=2, alpha=0.9)" in line for line in bold_lines)
    assert not any("no-kd" in line or "teacher (" in line for line in bold_lines)
    plain = console.export_text()
    assert mean_std_text(seed_tests(KD_TUNED_VA)) in plain and FAILED_ERROR in plain


def test_rich_render_is_plain_text(runs_dir: Path) -> None:
    text = render(load_records([runs_dir]), "rich")
    assert "\x1b[" not in text
    assert "teacher (visual, small-cnn)" in text and mean_std_text(seed_tests(NO_KD_AV)) in text


# --- issue 6: wide layout, html, significance, filters, published numbers

GOLDEN = FIXTURES / "golden"
PUBLISHED_FIXTURE = FIXTURES / "published-fixture.csv"
# (format, layout, with published numbers, golden file); regenerate with UPDATE_GOLDEN=1 after a
# deliberate change, and read the diff.
GOLDEN_CASES = [
    ("md", "wide", False, "wide.md"),
    ("csv", "wide", False, "wide.csv"),
    ("latex", "wide", False, "wide.tex"),
    ("rich", "wide", False, "wide.txt"),
    ("html", "wide", False, "wide.html"),
    ("html", "long", False, "long.html"),
    ("md", "long", True, "long-published.md"),
    ("csv", "long", True, "long-published.csv"),
    ("md", "wide", True, "wide-published.md"),
]


@pytest.mark.parametrize("fmt, layout, with_published, name", GOLDEN_CASES)
def test_table_formats_match_their_golden_files(runs_dir: Path, fmt: str, layout: str, with_published: bool,
                                                name: str) -> None:
    from cmkd_bench.reporting.leaderboard import load_published

    published = load_published(PUBLISHED_FIXTURE) if with_published else None
    text = render(load_records([runs_dir]), fmt, layout=layout, published=published)
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_paired_holm_p_values_follow_scipy_and_mark_only_after_correction(tables: list[TableData]) -> None:
    from scipy.stats import ttest_rel

    from cmkd_bench.reporting.leaderboard import BETTER_MARK, significance_mark

    va = table_titled(tables, "synth-av · visual → audio")
    kd, tuned = row_labelled(va, "kd"), row_labelled(va, "kd (T=2, alpha=0.9)")
    p_kd = ttest_rel(seed_tests(KD_VA), seed_tests(NO_KD_VA)).pvalue  # seed i pairs with seed i
    p_tuned = ttest_rel(seed_tests(KD_TUNED_VA), seed_tests(NO_KD_VA)).pvalue
    assert (kd.p_value, tuned.p_value) == (pytest.approx(p_kd), pytest.approx(p_tuned))
    # Holm over the family of 2 tested rows (ftkd has one seed): the smaller p doubled, the larger kept
    # unless the doubled smaller one is above it
    low, high = sorted([p_kd, p_tuned])
    expected = {low: min(1, 2 * low), high: max(min(1, 2 * low), high)}
    assert (kd.p_holm, tuned.p_holm) == (pytest.approx(expected[p_kd]), pytest.approx(expected[p_tuned]))
    assert kd.paired.mean == pytest.approx(statistics.mean(seed_tests(KD_VA)) - statistics.mean(seed_tests(NO_KD_VA)))
    assert significance_mark(kd) == (BETTER_MARK if kd.p_holm < 0.05 else "")
    ftkd = row_labelled(va, "ftkd")  # seed 0 only: a difference, but no CI, no test, no mark
    assert ftkd.paired.n == 1 and ftkd.paired.mean == pytest.approx(FINETUNE_VA[0] - NO_KD_VA[0][0])
    assert (ftkd.p_value, ftkd.p_holm, ftkd.paired.ci_low, significance_mark(ftkd)) == (None, None, None, "")
    assert row_labelled(va, "no-kd").p_value is None and row_labelled(va, "no-kd").paired is None


def _column(no_kd: list[float], **methods: list[float]) -> TableData:
    records = [make_record("no-kd", seed, value, value) for seed, value in enumerate(no_kd)]
    for method, values in methods.items():
        records += [make_record(method, seed, value, value) for seed, value in enumerate(values)]
    return summarize(records)[0]


def test_seeds_pair_up_where_welch_sees_only_the_spread_between_seeds() -> None:
    from scipy.stats import ttest_ind

    from cmkd_bench.reporting.leaderboard import BETTER_MARK, WORSE_MARK, significance_mark

    # seeds differ by 10 points, kd beats no-kd by 0.8-1.5 on every seed: Welch's p is about 0.9
    better = _column([60.0, 70.0, 80.0], kd=[61.0, 71.5, 80.8])
    kd = row_labelled(better, "kd")
    assert ttest_ind([61.0, 71.5, 80.8], [60.0, 70.0, 80.0], equal_var=False).pvalue > 0.8
    assert kd.p_holm < 0.05 and significance_mark(kd) == BETTER_MARK
    worse = _column([60.0, 70.0, 80.0], kd=[59.0, 68.5, 79.2])
    assert significance_mark(row_labelled(worse, "kd")) == WORSE_MARK


def test_a_mark_that_holm_takes_away_and_pairs_only_on_shared_seeds() -> None:
    from cmkd_bench.reporting.leaderboard import BETTER_MARK, significance_mark

    alone = _column([60.0, 70.0, 80.0], kd=[61.0, 71.5, 80.8])
    two = _column([60.0, 70.0, 80.0], kd=[61.0, 71.5, 80.8], fd=[61.0, 71.5, 80.8])
    kd_alone, kd, fd = row_labelled(alone, "kd"), row_labelled(two, "kd"), row_labelled(two, "fd")
    assert kd.p_value == pytest.approx(kd_alone.p_value) and 0.025 < kd.p_value < 0.05  # about 0.034
    assert kd.p_holm == fd.p_holm == pytest.approx(2 * kd.p_value)  # above 0.05 for both
    assert significance_mark(kd_alone) == BETTER_MARK and significance_mark(kd) == significance_mark(fd) == ""
    shared = _column([60.0, 70.0], kd=[61.0, 71.5, 20.0])  # kd's seed 2 has no no-kd partner
    assert row_labelled(shared, "kd").paired.differences == (1.0, 1.5)


def test_the_notes_say_which_test_and_what_holds_after_correction() -> None:
    text = render([make_record("no-kd", s, v, v) for s, v in enumerate([60.0, 70.0, 80.0])]
                  + [make_record("kd", s, v, v) for s, v in enumerate([61.0, 71.5, 80.8])], "md", layout="wide")
    assert "paired t-test over seeds against no-kd, Holm-adjusted within the column, p < 0.05" in text
    assert "After correction, 1 of the 1 tested rows are better than no-kd and 0 worse" in text
    assert "Welch" not in text


def test_average_rank_is_over_the_common_columns_only() -> None:
    from cmkd_bench.reporting.leaderboard import average_ranks, tied_ranks

    assert tied_ranks([50.0, 70.0, 60.0, 70.0]) == [4.0, 1.5, 3.0, 1.5]
    records = [make_record("no-kd", 0, 50.0, 49.0), make_record("kd", 0, 60.0, 59.0),
               make_record("fd", 0, 60.0, 59.0),
               make_record("no-kd", 0, 40.0, 39.0, direction=("audio", "visual")),
               make_record("kd", 0, 45.0, 44.0, direction=("audio", "visual"))]
    ranks = average_ranks(summarize(records))
    # both columns: no-kd and kd (2 x 2 cells) beat one column with fd (3 x 1); fd gets no rank
    assert ranks == {"no-kd": (2.0, 2), "kd": (1.0, 2)}
    text = render(records, "md", layout="wide")
    fd_line = next(line for line in text.splitlines() if line.startswith("| fd "))
    assert "— (1/2)" in fd_line
    assert "Common columns (2 of 2)" in text and "Friedman's test needs 3 or more ranked methods" in text


def test_filters_keep_the_no_kd_baseline_and_reject_unknown_names(runs_dir: Path) -> None:
    from cmkd_bench.reporting.leaderboard import filter_records

    records = load_records([runs_dir])
    kd_only = filter_records(records, methods=["kd"])
    assert {r["method"] for r in kd_only} == {"kd", "no-kd"}
    seed0 = filter_records(records, where=["seed=0"])
    assert {r["seed"] for r in seed0} == {0} and len(seed0) == 7
    tuned = filter_records(records, where=["T=2"])  # kd's changed T; no-kd has no T but stays the baseline
    assert {(r["method"], r["hparams_changed"].get("T")) for r in tuned} == {("kd", 2.0), ("no-kd", None)}
    assert filter_records(records, where=["recipe.epochs=30"])[0]["config"]["recipe"]["epochs"] == 30
    with pytest.raises(UserError, match="no run matches"):  # nothing left but baselines: said, not an empty table
        filter_records(records, where=["data.shared=0.7"])
    for bad, fragment in ((dict(datasets=["cifar"]), "cifar"), (dict(methods=["kdd"]), "kdd"),
                          (dict(where=["nope=1"]), "nope"), (dict(where=["seed"]), "KEY=VALUE")):
        with pytest.raises(UserError, match=fragment):
            filter_records(records, **bad)


def test_html_is_one_self_contained_sortable_file(runs_dir: Path) -> None:
    text = render(load_records([runs_dir]), "html", layout="wide")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<script>" in text and "addEventListener(\"click\"" in text and 'class="sortable"' in text
    for external in ("src=", "href=", "<link", "http://", "https://", "@import"):
        assert external not in text
    assert 'data-sort="65.8333' in text  # cells sort by their number, not their text


def test_published_file_in_the_repository_has_the_schema() -> None:
    from cmkd_bench.reporting.leaderboard import DEFAULT_PUBLISHED, PUBLISHED_COLUMNS, load_published

    lines = [line for line in DEFAULT_PUBLISHED.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == ",".join(PUBLISHED_COLUMNS)
    values = load_published(DEFAULT_PUBLISHED)  # every row is checked on loading
    assert len(values) == len(lines) - 1
    for value in values:
        assert "2511.19887" in value.source or value.source  # a source is always named
        assert value.table.strip()


@pytest.mark.parametrize("body, fragment", [
    ("method,dataset,metric,value\n", "header must be"),
    ("{header}\nkd,synth-av,visual,audio,top1,high,Paper,Table 1,primary\n", "not a number"),
    ("{header}\nkd,synth-av,visual,audio,top1,130,Paper,Table 1,primary\n", "not a percentage"),
    ("{header}\nkd,synth-av,visual,audio,top5,60,Paper,Table 1,primary\n", "metric 'top5'"),
    ("{header}\nkd,synth-av,visual,audio,top1,60,,Table 1,primary\n", "empty source"),
    ("{header}\nkd,synth-av,visual,visual,top1,60,Paper,Table 1,primary\n", "both 'visual'"),
    ("{header}\nkd,synth-av,visual,audio,top1,60,Paper,Table 1,primary\n"
     "kd,synth-av,visual,audio,top1,61,Paper,Table 2,primary\n", ":4: a second value"),
])
def test_bad_published_files_are_one_line_errors_with_the_line(tmp_path: Path, body: str, fragment: str) -> None:
    from cmkd_bench.reporting.leaderboard import PUBLISHED_COLUMNS, load_published

    path = tmp_path / "published.csv"
    path.write_text("# comment\n" + body.format(header=",".join(PUBLISHED_COLUMNS)), encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_published(path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_leaderboard_command_takes_layout_filters_and_published(runs_dir: Path, tmp_path: Path, capsys) -> None:
    from cmkd_bench.cli import main

    out = tmp_path / "board.html"
    with pytest.raises(SystemExit) as stopped:
        main(["leaderboard", str(runs_dir), "--format", "html", "--layout", "wide", "--method", "kd",
              "--where", "seed=0", "--published", str(PUBLISHED_FIXTURE), "--output", str(out)])
    assert stopped.value.code == 0, capsys.readouterr().err
    text = out.read_text(encoding="utf-8")
    assert "ftkd" not in text and "63.00 [2]" in text and "Fixture et al." in text
    assert "64.20</td>" in text or ">64.20<" in text  # kd seed 0 alone: no spread


def test_titles_name_only_the_settings_that_differ_among_their_own_datasets_tables() -> None:
    av = [make_record("no-kd", 0, 50.0, 49.0), make_record("no-kd", 0, 52.0, 51.0, epochs=30)]
    other = make_record("no-kd", 0, 40.0, 39.0)
    other.update(dataset="mfh-gauss", data_options={"overlap": 5}, run_id="no-kd-mfh")
    titles = [table.title for table in summarize([*av, other])]
    assert not any("unset" in title for title in titles), titles
    assert [t for t in titles if t.startswith("mfh-gauss")] == [
        "mfh-gauss · visual → audio · top1 (%) · student small-cnn, teacher small-cnn"]
    assert sorted(t.split(" · ")[-1] for t in titles if t.startswith("synth-av")) == [
        "recipe epochs=15", "recipe epochs=30"]


def test_the_wide_layout_puts_methods_without_a_rank_after_the_ranked_ones() -> None:
    from cmkd_bench.reporting.leaderboard import average_ranks
    from cmkd_bench.reporting.leaderboard.grid import wide_row_order

    av = ("audio", "visual")
    records = [make_record("no-kd", 0, 50.0, 49.0), make_record("no-kd", 0, 40.0, 39.0, direction=av),
               make_record("kd", 0, 55.0, 54.0), make_record("kd", 0, 45.0, 44.0, direction=av),
               make_record("fd", 0, 90.0, 89.0)]  # best rank, but in one column of two
    tables = summarize(records)
    ranks = average_ranks(tables)
    assert "fd" not in ranks and ranks["kd"] == (1.0, 2)  # fd lacks a common column: no rank
    assert wide_row_order(tables, ranks) == ["no-kd", "kd", "fd"]
    text = render(records, "md", layout="wide")
    assert "unranked methods come after the ranked ones" in text


def test_runs_whose_teacher_had_its_own_epochs_get_a_table_of_their_own() -> None:
    same = [make_record("no-kd", 0, 50.0, 49.0), make_record("kd", 0, 55.0, 54.0)]
    short = [make_record("no-kd", 0, 45.0, 44.0, run_suffix="-t"), make_record("kd", 0, 47.0, 46.0, run_suffix="-t")]
    for record in short:
        record["config"]["teacher_epochs"] = 3
    titles = sorted(table.title for table in summarize([*same, *short]))
    assert len(titles) == 2 and titles[0].endswith("recipe teacher_epochs=3") and titles[1].endswith("teacher_epochs=unset")
