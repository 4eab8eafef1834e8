"""The registry: names, aliases, metadata from signatures, clear errors, and both plug-in paths."""

from __future__ import annotations

import sys
import textwrap
from importlib import metadata

import pytest

from cmkd_bench.errors import UserError
from cmkd_bench.registry import BACKBONES, DATASETS, METHODS, Registry, load_entry_point_plugins

from conftest import TINY_SYNTH, cli


def test_register_reads_hparams_from_the_constructor():
    registry = Registry("widget", fixed_args=1)

    @registry.register("spinner", aliases=("spin",), tasks=("classification", "segmentation"), reference="Someone 2020")
    class Spinner:
        """Spins the features."""

        def __init__(self, context, speed: float = 2.0, turns: int = 3, label: str = "x"):
            self.speed = speed

    entry = registry.get("spin")
    assert entry.name == "spinner" and entry.description == "Spins the features."
    assert entry.hparams == {"speed": 2.0, "turns": 3, "label": "x"}
    assert entry.supports("segmentation") and registry.build("spinner", None, speed=5.0).speed == 5.0
    with pytest.raises(ValueError, match="already taken"):
        registry.register("other", aliases=("spin",))(Spinner)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UserError, match=r"^unknown method 'fitnets2'; did you mean 'fitnets'"):
        METHODS.get("fitnets2")
    with pytest.raises(UserError, match=r"unknown dataset 'synthav'; did you mean 'synth-av'"):
        DATASETS.get("synthav")
    with pytest.raises(UserError, match=r"see `cmkd-bench list methods`"):
        METHODS.get("zzzzzz")
    assert BACKBONES.get("resnet18").meta["family"] == "timm"


def test_presets_inherit_and_override_defaults():
    entry = METHODS.register_preset("kd-hot-test", "kd", description="kd at T=8", T=8.0)
    assert entry.hparams == {**METHODS.get("kd").hparams, "T": 8.0} and entry.meta["preset_of"] == "kd"
    with pytest.raises(ValueError, match="no hyper-parameter"):
        METHODS.register_preset("kd-bad-test", "kd", description="x", temperature=8.0)


PLUGIN_SOURCE = textwrap.dedent('''
    from cmkd_bench.method import Method
    from cmkd_bench.registry import METHODS

    @METHODS.register("{name}", description="a user's method", reference="Me 2026")
    class Mine(Method):
        def __init__(self, student, teacher, spec, weight: float = 0.25):
            super().__init__(student, teacher, spec)
            self.weight = weight

        def forward(self, student, teacher, batch):
            return {{"ce": self.task_loss(student.logits, batch["label"])}}
''')


def make_distribution(site, name: str, module: str) -> None:
    """A throwaway installed distribution: a module plus dist-info with a cmkd_bench.plugins entry point."""
    (site / f"{module}.py").write_text(PLUGIN_SOURCE.format(name=name))
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[cmkd_bench.plugins]\n{module} = {module}\n")


def test_entry_point_plugin_registers_in_process(tmp_path, monkeypatch):
    make_distribution(tmp_path, "entry-point-method", "cmkd_plugin_a")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [ep.name for ep in metadata.entry_points(group="cmkd_bench.plugins") if ep.name == "cmkd_plugin_a"]
    load_entry_point_plugins()
    assert METHODS.get("entry-point-method").hparams == {"weight": 0.25}
    sys.modules.pop("cmkd_plugin_a", None)


def test_entry_point_plugin_is_listed_and_runs_from_the_cli(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "ep-cli-method", "cmkd_plugin_b")
    env = {"PYTHONPATH": str(site)}
    listed = cli("list", "methods", env=env)
    assert listed.returncode == 0 and "ep-cli-method" in listed.stdout
    ran = cli("run", "--method", "ep-cli-method", "--dataset", "synth-av", "--epochs", "1", "--out", str(tmp_path / "o"),
              *TINY_SYNTH, env=env)
    assert ran.returncode == 0, ran.stderr


def test_plugin_file_applies_to_one_command(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text(PLUGIN_SOURCE.format(name="file-method"))
    with_plugin = cli("list", "methods", "--plugin", str(plugin))
    assert with_plugin.returncode == 0 and "file-method" in with_plugin.stdout
    assert "file-method" not in cli("list", "methods").stdout
    ran = cli("run", "--plugin", str(plugin), "--method", "file-method", "--dataset", "synth-av", "--epochs", "1",
              "--set", "weight=0.5", "--out", str(tmp_path / "o"), *TINY_SYNTH)
    assert ran.returncode == 0, ran.stderr


def test_broken_plugin_file_is_one_line(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('nope')\n")
    result = cli("list", "--plugin", str(plugin))
    assert result.returncode == 2 and "failed to import: RuntimeError: nope" in result.stderr
    assert "Traceback" not in result.stderr
