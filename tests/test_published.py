"""Published numbers: the committed file's rows and their standing, the confidence column, and the
stand-alone published grid for datasets without measured runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmkd_bench.errors import UserError
from cmkd_bench.reporting.leaderboard import load_published, render_published

from conftest import REPO

COMMITTED = REPO / "leaderboard" / "published.csv"
HEADER = "method,dataset,teacher_modality,student_modality,metric,value,source,table"


def test_committed_numbers_are_all_marked_secondary_and_keep_the_reference_values():
    values = {v.key: v for v in load_published(COMMITTED)}
    assert {v.confidence for v in values.values()} == {"secondary"}
    # spot checks against shared/reference/fd-cmkd-published.csv, as transcribed there
    assert values[("fd", "crema-d", "audio", "visual", "top1")].value == 71.0
    assert values[("no-kd", "ave", "visual", "audio", "top1")].value == 63.7
    assert values[("feat", "vggsound-50", "visual", "audio", "top1")].value == 67.7
    assert values[("fd-no-log", "crema-d", "audio", "visual", "top1")].value == 70.6  # the ablation table's
    assert values[("dkd", "nyuv2", "depth", "rgb", "miou")].value == 35.3


def test_the_standing_of_a_secondary_source_is_shown_wherever_the_number_is():
    text = render_published(load_published(COMMITTED))
    assert "(published, secondary source)" in text and "selects the best epoch on test" in text
    assert "| fd | 47.80 [1] |" in text  # ave audio -> visual, the first column


def test_a_file_without_the_confidence_column_reads_as_primary(tmp_path: Path):
    path = tmp_path / "p.csv"
    path.write_text(f"{HEADER}\nkd,crema-d,visual,audio,top1,61.7,Some paper,Table 1\n", encoding="utf-8")
    [value] = load_published(path)
    assert value.confidence == "primary" and value.citation == "Some paper, Table 1"


def test_an_unknown_confidence_is_a_one_line_error(tmp_path: Path):
    path = tmp_path / "p.csv"
    path.write_text(f"{HEADER},confidence\nkd,crema-d,visual,audio,top1,61.7,Some paper,Table 1,probably\n")
    with pytest.raises(UserError, match="confidence 'probably' is not one of primary, secondary"):
        load_published(path)
