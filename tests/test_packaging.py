"""methods/ and datasets/ ship as cmkd_bench.methods and cmkd_bench.datasets, never top-level."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_top_level_datasets_is_never_ours(tmp_path):
    probe = ("import importlib.util as u, cmkd_bench.datasets as ours; s = u.find_spec('datasets'); "
             "print('none' if s is None else s.origin); print(ours.__file__)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    found, ours = result.stdout.split()
    assert found == "none" or str(REPO) not in found
    assert ours.endswith("datasets/__init__.py")


def test_built_wheel_maps_folders_under_the_package(tmp_path):
    """What `pip install .` installs: the wheel's file list."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("cmkd_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "cmkd_bench/methods/fd.py" in names and "cmkd_bench/datasets/synth_av.py" in names
    assert not any(n.startswith(("datasets/", "methods/", "tests/")) for n in names)
    # `--with-published` reads its default from the package, so an installed wheel has it
    assert "cmkd_bench/reporting/leaderboard/published.csv" in names and "cmkd_bench/reporting/leaderboard/__init__.py" in names
    assert "cmkd_bench/cli/__init__.py" in names and "cmkd_bench/cli/run.py" in names  # the entry point's package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cmkd-bench = cmkd_bench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
