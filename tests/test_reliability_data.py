"""Prepared data: `prepare` records every file's SHA-256; a damaged or NaN file is caught before training
(at load and by `cmkd-bench verify ROOT`), naming the file; the run id names the prepared content."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmkd_bench.artefacts.files import file_sha256
from cmkd_bench.cli import main
from cmkd_bench.data.checksums import CHECKSUMS_JSON, content_fingerprint, verify_prepared, write_checksums
from cmkd_bench.data.clips import clips_fingerprint
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from test_prepare import fake_crema_d, prepare_in_process, read_clips

OPTIONS = {"image_size": 32, "num_workers": 0, "val_fraction": 0.5}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("crema") / "prepared"
    prepare_in_process("crema-d", fake_crema_d(tmp_path_factory.mktemp("raw")), dst)
    return dst


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "copy", copy_function=shutil.copy2))  # times kept, as cp -p


def test_prepare_records_every_file_it_wrote(clean):
    recorded = json.loads((clean / CHECKSUMS_JSON).read_text())["files"]
    on_disk = sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file() and p.name != CHECKSUMS_JSON)
    assert sorted(recorded) == on_disk and any(name.startswith("waveforms/") for name in recorded)
    for name in on_disk[:5]:
        assert recorded[name]["sha256"] == file_sha256(clean / name)
    assert verify_prepared(clean).problems == []


def test_a_waveform_rewritten_with_nan_is_refused_at_load_naming_it(copy, capsys):
    clip = next(r["clip"] for r in read_clips(copy) if r["split"] == "test")
    path = copy / "waveforms" / f"{clip}.npy"
    wave = np.load(path)
    np.save(path, np.full_like(wave, np.nan))  # same shape, same size: only the content changed
    with pytest.raises(UserError, match=f"prepared file '.*{clip}.npy' is damaged.*cmkd-bench verify"):
        DATASETS.build("crema-d", copy, **OPTIONS)
    assert verify_prepared(copy).problems == [(f"waveforms/{clip}.npy", "is damaged: its content does not match "
                                               "the SHA-256 recorded when it was prepared")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(copy)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and f"{clip}.npy" in err
    assert f"damaged: {path}" in out


def test_nan_written_back_with_its_old_time_and_checksum_is_still_caught(copy):
    """Even a NaN file the checksums were rewritten for: verify reads .npy values, and the loader too."""
    clip = next(r["clip"] for r in read_clips(copy) if r["split"] == "test")
    path = copy / "waveforms" / f"{clip}.npy"
    np.save(path, np.full_like(np.load(path), np.nan))
    write_checksums(copy)
    assert verify_prepared(copy).problems == [(f"waveforms/{clip}.npy", "holds NaN or infinite values")]
    data = DATASETS.build("crema-d", copy, **OPTIONS)
    with pytest.raises(UserError, match=f"{clip}.npy: holds NaN or infinite values"):
        list(data.batches("test", 6, shuffle=False))


def test_a_copy_without_its_times_is_checked_by_content(copy):
    for path in copy.rglob("*"):
        if path.is_file() and path.name != CHECKSUMS_JSON:
            os.utime(path, ns=(1, 1))
    DATASETS.build("crema-d", copy, **OPTIONS)  # the content matches: accepted
    frame = next((copy / "frames").rglob("*.jpg"))
    data = bytearray(frame.read_bytes())
    data[-10] ^= 0xFF
    frame.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{frame.name}' is damaged"):
        DATASETS.build("crema-d", copy, **OPTIONS)


def test_the_run_id_names_the_prepared_content_not_only_clips_csv(clean, copy):
    assert clips_fingerprint(copy) == clips_fingerprint(clean) == content_fingerprint(clean)
    clip = read_clips(copy)[0]["clip"]
    path = copy / "waveforms" / f"{clip}.npy"
    np.save(path, np.load(path) * 0.5)  # other audio, the same clips.csv
    write_checksums(copy)
    assert (copy / "clips.csv").read_bytes() == (clean / "clips.csv").read_bytes()
    assert clips_fingerprint(copy) != clips_fingerprint(clean)
    a = DATASETS.build("crema-d", clean, **OPTIONS).spec.options
    b = DATASETS.build("crema-d", copy, **OPTIONS).spec.options
    assert a != b


def test_verify_of_a_folder_without_checksums_is_one_line(tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "checksums.json" in err
