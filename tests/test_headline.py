"""The headline (issue 30): protocol v2's tuned rows against the tuned no-kd, with paired CIs, Holm marks,
the aggregate and the takeaway sentences; the appendices; the critical-difference diagram. Every expected
number is recomputed here, by hand, from the fake records' values."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from cmkd_bench.reporting.leaderboard import (BETTER_MARK, WORSE_MARK, build_headline, render, split_protocols,
                                              summarize)
from cmkd_bench.reporting.leaderboard.headline import REFERENCE_LABEL, headline_cell_text
from cmkd_bench.reporting.leaderboard.report import headline_section, report_md

from test_leaderboard import make_record

SEEDS = (0, 1, 2, 3, 4)
SELECTION_SEED = 1000
BUDGET = 8
RECIPE = {"study": "recipe-synth-av-b8", "lr": 0.02, "weight_decay": 0.0005}
VA, AV, MM = ("visual", "audio"), ("audio", "visual"), ("audio+visual", "visual")
COLUMN = {VA: "synth-av visual→audio", AV: "synth-av audio→visual",
          MM: "synth-av audio+visual→visual"}

# per direction: no-kd's per-seed test scores, and per method (settings selected, per-seed differences to no-kd)
NO_KD = {VA: [60.0, 61.0, 62.0, 63.0, 64.0], AV: [40.0, 42.0, 41.0, 43.0, 44.0], MM: [50.0, 50.5, 51.0, 49.5, 50.0]}
SELECTED = {
    "kd": ({"T": 2.0}, {VA: [2.0, 2.2, 1.8, 2.1, 1.9], AV: [0.5, -0.5, 0.3, -0.3, 0.0]}),
    "fitnet": ({"weight": 0.1}, {VA: [1.0, -1.0, 0.5, -0.5, 0.0], AV: [0.2, 0.1, -0.1, 0.0, 0.3]}),
    "dkd": ({"beta": 0.5}, {VA: [-3.0, -3.2, -2.8, -3.1, -2.9], AV: [-1.0, 1.0, 0.0, 0.5, -0.5]}),
    "crd": ({"weight": 0.2}, {MM: [0.4, -0.2, 0.1, 0.0, 0.2]}),
}
# at (stages=all, beta=100) and at-all-stages (beta=100) select the same settings and score the same;
# in audio -> visual one run of at's is selected by both studies (the same run ids)
AT_DIFFS = {VA: [0.5, 0.7, 0.3, 0.6, 0.4], AV: [0.1, 0.2, -0.1, 0.0, 0.3]}


def v2(record: dict[str, Any], role: str = "reported") -> dict[str, Any]:
    record["protocol"] = {"version": 2, "role": role, "selection_seed": SELECTION_SEED,
                          "reported_seeds": list(SEEDS), "budget": BUDGET, "recipe": dict(RECIPE)}
    record["config"]["recipe"] = {"epochs": 15, "batch_size": 64, "lr": RECIPE["lr"], "weight_decay": RECIPE["weight_decay"]}
    return record


def tuning_entry(method: str, direction: tuple[str, str], selected: dict[str, Any], role: str = "selected",
                 space: dict[str, list] | None = None, diverged: int = 0) -> dict[str, Any]:
    configurations = [{"hparams": {}, "run_id": f"{method}-c{i}", "val": None if i < diverged else 50.0 + i}
                      for i in range(BUDGET)]
    return {"role": role, "study": f"{method}-synth-av-{direction[0]}2{direction[1]}-b{BUDGET}", "method": method,
            "dataset": "synth-av", "teacher_modality": direction[0], "student_modality": direction[1],
            "space": space or {"weight": [0.001, 0.01, 0.1, 1.0]}, "space_size": 4, "budget": BUDGET,
            "selection_seed": SELECTION_SEED, "selection_metric": "val_best", "configurations": configurations,
            "selected": selected}


def reported(method: str, direction: tuple[str, str], seed: int, test: float, hparams: dict[str, Any],
             *, full: dict[str, Any] | None = None, selected_by: tuple[str, ...] = (), suffix: str = "",
             teacher: float = 80.0) -> dict[str, Any]:
    record = make_record(method, seed, test, test - 0.5, direction=direction, hparams_changed=hparams,
                         teacher_metrics=(teacher, teacher), run_suffix=suffix)
    record["hparams"] = full if full is not None else dict(hparams)
    v2(record)
    record["tuning"] = [tuning_entry(name, direction, hparams, space={"beta": [10.0, 100.0, 1000.0]})
                        for name in selected_by]
    return record


def v2_records() -> list[dict[str, Any]]:
    records = []
    for direction in (VA, AV, MM):
        for seed, value in zip(SEEDS, NO_KD[direction]):
            record = reported("no-kd", direction, seed, value, {}, suffix="-recipe")
            record["tuning"] = [tuning_entry("no-kd", direction, {"lr": RECIPE["lr"], "weight_decay": RECIPE["weight_decay"]},
                                             space={"lr": [0.005, 0.02, 0.05], "weight_decay": [0.0, 0.0005]})]
            records.append(record)
    for method, (hparams, diffs) in SELECTED.items():
        for direction, per_seed in diffs.items():
            for seed, base, diff in zip(SEEDS, NO_KD[direction], per_seed):
                records.append(reported(method, direction, seed, base + diff, hparams, selected_by=(method,),
                                        suffix="-sel"))
    at_settings = {"stages": "all", "beta": 100.0, "p": 2.0}
    for seed, base, diff in zip(SEEDS, NO_KD[VA], AT_DIFFS[VA]):  # two runs, the same settings and scores
        records.append(reported("at", VA, seed, base + diff, {"stages": "all", "beta": 100.0}, full=at_settings,
                                selected_by=("at",), suffix="-sel"))
        records.append(reported("at-all-stages", VA, seed, base + diff, {"beta": 100.0}, full=at_settings,
                                selected_by=("at-all-stages",), suffix="-sel"))
    for seed, base, diff in zip(SEEDS, NO_KD[AV], AT_DIFFS[AV]):  # one run, selected by both studies
        records.append(reported("at", AV, seed, base + diff, {"stages": "all", "beta": 100.0}, full=at_settings,
                                selected_by=("at", "at-all-stages"), suffix="-sel"))
    # kd's official defaults on the reported seeds (the defaults appendix), 1 point below no-kd
    for seed, base in zip(SEEDS, NO_KD[VA]):
        records.append(reported("kd", VA, seed, base - 1.0, {}, suffix="-defaults"))
    # selection runs on the selection seed: never rows (one at the defaults, one of another recipe)
    records.append(candidate("kd", {}, 99.0))
    records.append(candidate("kd", {"T": 8.0}, 98.0))
    recipe_candidate = v2(make_record("no-kd", SELECTION_SEED, 97.0, 97.0, run_suffix="-rcand"), role="recipe-candidate")
    recipe_candidate["config"]["recipe"].update(lr=0.05, weight_decay=0.0)
    records.append(recipe_candidate)
    failed = candidate("fitnet", {"weight": 1000.0}, None)
    records.append(failed)
    return records


def candidate(method: str, hparams: dict[str, Any], test: float | None) -> dict[str, Any]:
    status = "completed" if test is not None else "failed"
    record = make_record(method, SELECTION_SEED, test, test, hparams_changed=hparams, status=status,
                         error=None if test is not None else "loss term 'ce' became non-finite at epoch 1, step 3",
                         run_suffix=f"-cand-{len(hparams)}-{test}")
    v2(record, role="candidate")
    if test is not None:
        record["tuning"] = [tuning_entry(method, VA, {"T": 2.0}, role="candidate")]
    return record


def v1_records() -> list[dict[str, Any]]:
    """Protocol v1 records of the same dataset (no "protocol" key): kd 30 points above no-kd."""
    return [make_record(method, seed, 60.0 + (30.0 if method == "kd" else 0.0) + seed, 60.0, run_suffix="-v1")
            for method in ("no-kd", "kd") for seed in (0, 1, 2)]


def paired(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and Student-t 95% CI of paired differences, by hand."""
    from scipy.stats import t

    mean = statistics.mean(diffs)
    half = t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


@pytest.fixture(scope="module")
def headline():
    return build_headline(v2_records() + v1_records())


def row(headline, label: str):
    matches = [r for r in headline.rows if r.label == label]
    assert len(matches) == 1, [r.label for r in headline.rows]
    return matches[0]


def cell(headline, label: str, direction: tuple[str, str]):
    return row(headline, label).cells[headline.columns.index(COLUMN[direction])]


# --- the table


def test_columns_are_one_per_dataset_and_direction_with_the_multimodal_teacher_apart(headline) -> None:
    assert headline.columns == [COLUMN[AV], COLUMN[MM], COLUMN[VA]]  # the wide layout's order
    assert [t.teacher_modality for t in headline.tables] == ["audio", "audio+visual", "visual"]
    # crd was tuned with the multimodal teacher only: it has no cell in the unimodal columns
    assert cell(headline, "crd", AV) is None and cell(headline, "crd", VA) is None
    assert cell(headline, "crd", MM) is not None


def test_cells_are_the_score_and_the_paired_delta_with_its_ci_and_holm_mark(headline) -> None:
    kd = cell(headline, "kd", VA)
    mean, low, high = paired(SELECTED["kd"][1][VA])
    assert kd.row.mean == pytest.approx(statistics.mean(NO_KD[VA]) + mean)
    assert (kd.row.paired.mean, kd.row.paired.ci_low, kd.row.paired.ci_high) == pytest.approx((mean, low, high))
    # by hand: differences 2.0, 2.2, 1.8, 2.1, 1.9: mean 2.00, sd 0.1581, t(0.975, 4) = 2.7764 -> +-0.196
    assert headline_cell_text(kd) == f"64.00 (+2.00 [+1.80, +2.20] {BETTER_MARK})"
    fitnet = cell(headline, "fitnet", VA)  # differences 1, -1, 0.5, -0.5, 0: sd 0.7906, half-width 0.9816
    assert headline_cell_text(fitnet) == "62.00 (+0.00 [-0.98, +0.98])"
    assert headline_cell_text(cell(headline, "dkd", VA)).endswith(f"{WORSE_MARK})")
    reference = cell(headline, REFERENCE_LABEL, VA)
    assert headline_cell_text(reference, reference=True) == f"62.00 ± {statistics.stdev(NO_KD[VA]):.2f}"


def test_holm_is_over_the_columns_tuned_rows_and_matches_scipy(headline) -> None:
    from scipy.stats import ttest_rel

    from cmkd_bench.reporting.statistics import holm

    # the family of visual -> audio: kd, fitnet, dkd and at / at-all-stages (one configuration, tested once)
    family = {"kd": SELECTED["kd"][1][VA], "fitnet": SELECTED["fitnet"][1][VA], "dkd": SELECTED["dkd"][1][VA],
              "at / at-all-stages": AT_DIFFS[VA]}
    base = NO_KD[VA]
    raw = [float(ttest_rel([b + d for b, d in zip(base, diffs)], base).pvalue) for diffs in family.values()]
    for label, p, adjusted in zip(family, raw, holm(raw)):
        got = cell(headline, label, VA).row
        assert got.p_value == pytest.approx(p) and got.p_holm == pytest.approx(adjusted)
    m = len(raw)  # Holm by hand for the smallest p: times m
    assert min(holm(raw)) == pytest.approx(min(raw) * m)


def test_aggregate_is_the_iqm_of_the_pooled_differences_with_p_improvement(headline) -> None:
    from scipy.stats import trim_mean

    kd = row(headline, "kd").aggregate
    pooled = SELECTED["kd"][1][VA] + SELECTED["kd"][1][AV]
    assert kd.iqm == pytest.approx(trim_mean(pooled, 0.25))
    assert kd.ci_low < kd.iqm < kd.ci_high
    # P(kd > no-kd): per column over all pairs of seeds, then averaged
    def p_col(direction):
        x = [b + d for b, d in zip(NO_KD[direction], SELECTED["kd"][1][direction])]
        return statistics.mean((a > b) + 0.5 * (a == b) for a in x for b in NO_KD[direction])
    assert kd.p_improvement == pytest.approx((p_col(VA) + p_col(AV)) / 2)
    assert headline.rows[0].label == REFERENCE_LABEL and headline.rows[0].aggregate is None
    iqms = [r.aggregate.iqm for r in headline.methods]
    assert iqms == sorted(iqms, reverse=True)  # ordered by IQM delta


def test_v1_records_are_never_mixed_in_and_a_line_says_how_many_were_left_out() -> None:
    records = v2_records() + v1_records()
    split = split_protocols(records)
    assert split.version == 2 and split.left_out == len(v1_records())
    assert split.note().startswith("6 protocol v1 records were left out")
    text = render(records, "md")
    assert "6 protocol v1 records were left out" in text
    assert "-v1" not in render(records, "csv")  # no v1 run id, no v1 number anywhere
    for table in summarize(split.records):
        assert all(not source.endswith("-v1") for r in table.rows for source in r.sources)
    assert "protocol v1" not in text.replace("protocol v1 records were left out", "")


def test_v1_only_records_give_the_existing_output_titled_as_protocol_v1_when_tuned() -> None:
    text = render(v1_records(), "md")  # plain runs (make demo's): no protocol to name
    assert "Headline" not in text and "protocol v" not in text and "left out" not in text
    tuned = v1_records()
    tuned[3]["tuning"] = [{"role": "selected", "study": "kd-study", "budget": 8}]
    text = render(tuned, "md")
    assert "Headline" not in text and "· protocol v1" in text and "left out" not in text


def test_candidates_are_never_rows_and_a_failed_candidate_is_labelled_as_one() -> None:
    records = v2_records()
    for view in ("all", "default", "tuned"):
        for table in summarize(records, view):
            assert not any("-cand" in source for r in table.rows for source in r.sources), view
            assert not any(r.label.startswith("no-kd") and "rcand" in "".join(r.sources) for r in table.rows)
    text = render(records, "md")
    assert "99.00" not in text and "98.00" not in text and "97.00" not in text
    failed = [line for line in text.splitlines() if "fitnet-synth-av" in line and "cand" in line]
    assert len(failed) == 1 and "tuning candidate weight=1000" in failed[0]
    long_csv = list(csv.DictReader(io.StringIO(render(records, "csv"))))
    assert not any("-cand" in line["run_ids"] or "-rcand" in line["run_ids"] for line in long_csv)


def test_a_configuration_two_presets_share_is_shown_once_with_both_names(headline) -> None:
    labels = [r.label for r in headline.rows]
    assert "at / at-all-stages" in labels and "at" not in labels and "at-all-stages" not in labels
    shared = row(headline, "at / at-all-stages")
    assert all(c is not None and c.same_as is None for c in (shared.cells[0], shared.cells[2]))
    # in the long tables too: one row, both names
    text = render(v2_records(), "md", view="tuned")
    assert text.count("at / at-all-stages (tuned)") == 2 and "| at (tuned) |" not in text
    # every method once in the headline
    methods = [m for r in headline.rows for m in r.methods]
    assert len(methods) == len(set(methods))


def test_a_method_whose_selection_kept_the_defaults_is_shown_once() -> None:
    records = [r for r in v2_records() if not r["run_id"].endswith("-defaults")]
    for r in records:
        if r["method"] == "fitnet" and r["protocol"]["role"] == "reported":
            r["hparams_changed"], r["hparams"] = {}, {}
            r["tuning"][0]["selected"] = {}
    (va,) = [t for t in summarize(records) if t.teacher_modality == "visual"]
    assert [r.label for r in va.rows if r.method == "fitnet"] == ["fitnet (tuned)"]


def test_the_takeaway_sentences_say_what_the_numbers_say(headline) -> None:
    first, second, third = headline.sentences
    assert first == ("After correction (Holm-adjusted p < 0.05 within the column), these beat the tuned no-kd: "
                     f"kd and at / at-all-stages in {COLUMN[VA]}.")
    tested = sum(1 for r in headline.methods for c in r.cells if c is not None and c.row.p_holm is not None)
    assert second == (f"In {COLUMN[AV]} and {COLUMN[MM]} no method does; 1 of the {tested} tested method-column "
                      "cells is significantly worse.")
    leader = max(headline.methods, key=lambda r: r.aggregate.iqm)
    assert leader.label == "kd"
    agg = leader.aggregate
    assert third.startswith(f"Across columns kd leads by IQM Δ, {agg.iqm:+.2f} points [95% CI {agg.ci_low:+.2f}, "
                            f"{agg.ci_high:+.2f}] over its 2 columns")
    assert ("excludes 0" in third) == (agg.ci_low > 0)


def test_the_takeaway_says_so_when_nothing_beats_no_kd() -> None:
    records = [r for r in v2_records() if r["method"] not in ("kd", "dkd", "at", "at-all-stages")]
    sentences = build_headline(records).sentences
    assert sentences[0] == "No method beats the tuned no-kd in any of the 3 columns after correction (Holm-adjusted " \
                           "p < 0.05 within the column)."
    assert "includes 0: no aggregate gain is established" in sentences[-1]


def test_a_cell_whose_records_distilled_from_another_teacher_is_marked_and_the_takeaway_says_so() -> None:
    # kd's seed-1 record in the visual -> audio column distilled from that seed's teacher trained again
    # elsewhere (same key, other weights: other scores), the case of records made over two hosts
    records = v2_records()
    odd = next(r for r in records if r["method"] == "kd" and r["seed"] == SEEDS[1] and r["run_id"].endswith("-sel")
               and (r["teacher_modality"], r["student_modality"]) == VA)
    odd["teacher"]["metrics"] = {**odd["teacher"]["metrics"], "val": 79.75}
    marked = build_headline(records)
    assert cell(marked, "kd", VA).row.stale and headline_cell_text(cell(marked, "kd", VA)).endswith(" §")
    assert not headline_cell_text(cell(marked, "kd", AV)).endswith("§")
    assert not headline_cell_text(cell(marked, REFERENCE_LABEL, VA), reference=True).endswith("§")
    assert marked.sentences[-1].startswith("§: 1 cell holds records made under another code revision, environment or "
                                           "teacher") and "(rows: kd;" in marked.sentences[-1]
    clean = build_headline(v2_records())
    assert not any(sentence.startswith("§") for sentence in clean.sentences)
    assert not any("§" in headline_cell_text(c, r.reference) for r in clean.rows for c in r.cells if c is not None)


def test_the_headline_comes_first_in_md_rich_html_and_latex_and_the_csv_keeps_the_paired_columns() -> None:
    records = v2_records()
    md = render(records, "md")
    assert md.startswith("### Headline: ") and md.index("### Headline") < md.index("### synth-av")
    rich = render(records, "rich", width=400)
    assert rich.lstrip().startswith("Headline: ")
    assert render(records, "html").index("Headline") < render(records, "html").index("synth-av · ")
    assert r"Headline: each method" in render(records, "latex")
    lines = list(csv.DictReader(io.StringIO(render(records, "csv"))))
    kd = next(line for line in lines if line["method"] == "kd" and line["selection"] == "tuned"
              and line["direction"] == "visual->audio")
    mean, low, high = paired(SELECTED["kd"][1][VA])
    assert (float(kd["delta"]), float(kd["delta_ci_low"]), float(kd["delta_ci_high"])) == pytest.approx(
        (mean, low, high), abs=1e-4)
    assert kd["p_paired"] and kd["p_holm"] and kd["protocol"] == "2"


def test_the_report_opens_with_the_headline_then_the_appendices() -> None:
    text = report_md(v2_records() + v1_records())
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert text.startswith("### Headline: ")
    assert headings == ["## Appendix A: defaults", "## Appendix B: per dataset and direction",
                        "## Appendix C: selected configurations", "## Appendix D: provenance",
                        "## Appendix E: failed runs"]
    defaults = text.split("## Appendix A")[1].split("## Appendix B")[0]
    assert "| kd |" in defaults and "61.00 ± 1.58" in defaults  # kd's defaults: no-kd - 1
    selected = text.split("## Appendix C")[1].split("## Appendix D")[0]
    assert "| no-kd (recipe) | lr ∈ {0.005, 0.02, 0.05} × weight_decay ∈ {0, 0.0005} (6) |" in selected
    assert "T=2 · 8/8" in selected
    provenance = text.split("## Appendix D")[1].split("## Appendix E")[0]
    assert "| abc123 | unknown | ? | 70 | 4 |" in provenance  # 15 no-kd, 40 selected, 10 at, 5 defaults; 4 candidates
    assert "tuning candidate weight=1000" in text.split("## Appendix E")[1]
    assert "6 protocol v1 records were left out" in text


def test_the_readme_section_is_the_headline_and_its_takeaway_in_one_screen() -> None:
    section = headline_section(v2_records())
    lines = section.splitlines()
    assert lines[0].startswith("### Headline: ") and lines[2].startswith("After correction")
    assert all(line.startswith("|") for line in lines[4:])
    assert len(lines) < 40 and "- Cell:" not in section


def test_regenerate_writes_the_headline_into_the_readme(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("regenerate", Path(__file__).parents[1] / "leaderboard" / "regenerate.py")
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)
    from test_leaderboard import write_records

    runs, here = tmp_path / "runs", tmp_path / "leaderboard"
    write_records(runs, v2_records())
    here.mkdir()
    (here / "published.csv").write_text((Path(__file__).parents[1] / "leaderboard" / "published.csv").read_text())
    (tmp_path / "README.md").write_text("intro\n<!-- leaderboard:start -->\nold\n<!-- leaderboard:end -->\nrest\n")
    monkeypatch.setattr(regenerate, "HERE", here)
    regenerate.write_tables(runs)
    readme = (tmp_path / "README.md").read_text()
    section = readme.split("<!-- leaderboard:start -->\n")[1].split("<!-- leaderboard:end -->")[0]
    assert section.startswith("### Headline: ") and section.strip().endswith("(leaderboard/LEADERBOARD.md).")
    assert len(section.splitlines()) <= 40 and readme.startswith("intro\n") and readme.endswith("rest\n")
    board = (here / "LEADERBOARD.md").read_text()
    assert board.startswith("# Leaderboard") and board.index("### Headline") < board.index("## Appendix A")
    assert "## Appendix F: published (not measured here)" in board


# --- the critical-difference diagram


def test_the_critical_difference_follows_demsar() -> None:
    from cmkd_bench.reporting.plots import critical_difference, nemenyi_q

    assert nemenyi_q(4) == pytest.approx(2.569, abs=1e-3)  # Demšar 2006, Table 5(a), alpha 0.05
    assert nemenyi_q(2) == pytest.approx(1.960, abs=1e-3)
    assert nemenyi_q(10) == pytest.approx(3.164, abs=1e-3)
    assert critical_difference(4, 6) == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 6)), abs=1e-3)  # 1.915


def test_cd_groups_join_methods_closer_than_the_critical_difference() -> None:
    from cmkd_bench.reporting.plots import cd_cliques

    ranks = {"a": 1.0, "b": 1.5, "c": 2.6, "d": 4.0}
    assert cd_cliques(ranks, 1.2) == [("a", "b"), ("b", "c")]
    assert cd_cliques(ranks, 0.1) == []


def test_plot_cd_writes_a_deterministic_svg_with_the_friedman_p(tmp_path: Path) -> None:
    from cmkd_bench.reporting.plots import cd_data, plot_cd

    records = v2_records() + v1_records()
    data = cd_data(records)
    assert data.protocol == 2 and REFERENCE_LABEL in data.ranking.ranks and "at / at-all-stages" in data.ranking.ranks
    (svg,) = plot_cd(records, tmp_path / "a", formats=("svg",))
    again = plot_cd(records, tmp_path / "b", formats=("svg",))[0]
    text = svg.read_text()
    assert svg.name == "cd.svg" and text.startswith("<?xml") and svg.read_bytes() == again.read_bytes()
    assert "Friedman's test over them: chi-square" in data.caption
    assert f"p = {data.ranking.friedman_p:.3g}" in data.caption


def test_plot_cd_command_takes_the_filters(tmp_path: Path, capsys) -> None:
    from click.testing import CliRunner

    from cmkd_bench.cli.plots import plot_group
    from test_leaderboard import write_records

    write_records(tmp_path / "runs", v2_records())
    result = CliRunner().invoke(plot_group, ["cd", str(tmp_path / "runs"), "--method", "kd", "--method", "fitnet",
                                             "--method", "dkd", "--output-dir", str(tmp_path / "out"),
                                             "--format", "svg"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "cd.svg").exists() and "wrote" in result.output


def test_failed_runs_say_what_each_run_was() -> None:
    from cmkd_bench.reporting.leaderboard import candidate_label

    recipe = v2(make_record("no-kd", SELECTION_SEED, None, None, status="failed", error="diverged",
                            run_suffix="-rfail"), role="recipe-candidate")
    recipe["config"]["recipe"].update(lr=0.5, weight_decay=0.0)
    assert candidate_label(recipe) == "recipe candidate lr=0.5, weight_decay=0"
    assert candidate_label(candidate("fitnet", {"weight": 1000.0}, None)) == "tuning candidate weight=1000"
    assert candidate_label(candidate("kd", {}, None)) == "tuning candidate the defaults"
    seed_failed = v2(make_record("kd", 3, None, None, status="failed", error="NaN", hparams_changed={"T": 2.0},
                                 run_suffix="-rep"))
    assert candidate_label(seed_failed) is None
    text = render(v2_records() + [recipe, seed_failed], "md")
    failed = text.split("### failed runs")[1]
    assert "| recipe candidate lr=0.5, weight_decay=0 |" in failed and "| reported run, T=2 |" in failed


def test_provenance_counts_environments_and_lists_the_odd_run_ids_collapsed() -> None:
    records = v2_records()
    odd = next(r for r in records if r["method"] == "kd" and r["run_id"].endswith("-sel"))
    odd["git_revision"] = "def456"
    text = report_md(records).split("## Appendix D: provenance")[1].split("## Appendix E")[0]
    assert "| abc123 | unknown | ? | 69 | 4 |" in text and "| def456 | unknown | ? | 1 | 0 |" in text
    assert "§: 1 record: revision def456, most abc123." in text
    assert f"<details><summary>the 1 run ids</summary>\n\n- {odd['run_id']}\n\n</details>" in text
    # the headline's detail marks the row; its notes carry no run ids
    assert "kd (tuned) §" in report_md(records).split("## Appendix B")[1]


def test_plot_cd_on_protocol_v1_ranks_the_tuned_overview(tmp_path: Path) -> None:
    from cmkd_bench.reporting.plots import cd_data

    records = []
    for direction in (VA, AV):
        for seed in (0, 1, 2):
            for method, gain in (("no-kd", 0.0), ("kd", 2.0), ("fitnet", 1.0)):
                records.append(make_record(method, seed, 60.0 + gain + seed, 59.0, direction=direction))
    data = cd_data(records)
    assert data.protocol == 1 and data.ranking.ranks == {"kd": 1.0, "fitnet": 2.0, "no-kd": 3.0}
    from cmkd_bench.reporting.plots import critical_difference
    assert data.cd == pytest.approx(critical_difference(3, 2)) and "protocol v1" in data.caption
