"""The run record as the contract between running and reporting: names, reading and writing, fields."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cmkd_bench.artefacts import records
from cmkd_bench.errors import UserError

from test_leaderboard import make_record


def test_metric_names_per_task():
    assert records.metric_name("classification") == "top1"
    assert records.metric_name("segmentation") == "miou"
    assert records.metric_name("detection") == records.UNKNOWN_METRIC
    record = make_record("kd", 0, 50.0, 49.0)
    assert records.record_metric_name(record) == "top1"
    del record["metric"]
    record["task"] = "segmentation"
    assert records.record_metric_name(record) == "miou"  # an old record without the field: its task's


def test_direction_labels_in_every_style():
    assert records.direction_label("visual", "audio") == "visual → audio"
    assert records.direction_label("visual", "audio", "compact") == "visual→audio"
    assert records.direction_label("visual", "audio", "ascii") == "visual->audio"
    reverse = make_record("kd", 0, 50.0, 49.0, direction=("audio", "visual"))
    assert records.record_direction(reverse) == "audio → visual"
    with pytest.raises(ValueError, match="spaced, compact, ascii"):
        records.direction_label("visual", "audio", "fancy")


def test_a_written_record_reads_back_checked(tmp_path: Path):
    record = make_record("kd", 0, 50.0, 49.0)
    path = tmp_path / "run" / "result.json"
    records.write_record(record, path)
    assert records.read_record(path) == record == records.find_record(path)
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary file left
    assert records.load_records(tmp_path) == [record]


def test_find_record_is_none_where_no_record_reads_back(tmp_path: Path):
    assert records.find_record(tmp_path / "absent.json") is None
    broken = tmp_path / "broken.json"
    broken.write_text('{"run_id": ', encoding="utf-8")
    assert records.find_record(broken) is None
    with pytest.raises(UserError, match="not valid JSON"):
        records.read_record(broken)
    incomplete = make_record("kd", 0, 50.0, 49.0)
    incomplete["metrics"] = {"test": None}
    (tmp_path / "incomplete.json").write_text(json.dumps(incomplete), encoding="utf-8")
    assert records.find_record(tmp_path / "incomplete.json") is None  # completed without a score: run it again


def test_field_accessors():
    record = make_record("kd", 0, 50.0, 49.0, hparams_changed={"T": 2.0}, epochs=30)
    assert records.metric(record, "test") == 50.0 and records.metric(record, "nope") is None
    assert records.metric({**record, "metrics": None}, "test") is None
    assert records.data_options(record) == {"shared": 0.5} and records.recipe(record)["epochs"] == 30
    assert records.hparams_changed(record) == {"T": 2.0}
    assert records.hparams_changed({**record, "hparams_changed": None}) == {}
    assert records.created_at(record) == datetime(2026, 11, 26, 10, tzinfo=timezone.utc)
    assert records.created_at({**record, "created": "2026-11-26T10:00:00"}).tzinfo is not None  # naive: UTC
    assert records.created_at({**record, "created": "yesterday"}) < records.created_at(record)
    assert records.tuning_entries({**record, "tuning": [{"role": "selected"}, "junk"]}) == [{"role": "selected"}]
    assert records.tuning_entries({**record, "tuning": "junk"}) == []


def test_settings_by_key_and_scope():
    record = make_record("kd", 3, 50.0, 49.0, hparams_changed={"T": 2.0})
    record["hparams"] = {"T": 4.0, "alpha": 0.5}
    assert records.record_setting(record, "seed") == 3
    assert records.record_setting(record, "T") == 2.0  # the changed value wins over the stored default
    assert records.record_setting(record, "data.shared") == 0.5 and records.record_setting(record, "recipe.lr") == 0.05
    assert records.record_setting(record, "hparams.shared") is records.NO_SETTING
    assert records.has_setting(record, "alpha") and not records.has_setting(record, "beta")


def test_reading_records_needs_neither_torch_nor_rich():
    probe = ("import sys, cmkd_bench.artefacts.records as r; r.metric_name('classification'); "
             "print(sorted(m for m in ('torch', 'rich') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
