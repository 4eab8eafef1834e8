"""Everything that can be named on the command line: built-ins first, then plug-ins."""

from __future__ import annotations

from .registry import BACKBONES, DATASETS, METHODS, load_entry_point_plugins, load_plugin_file

__all__ = ["BACKBONES", "DATASETS", "METHODS", "load_all"]


def load_all(plugin_files: tuple[str, ...] | list[str] = ()) -> None:
    """Register the built-in methods, datasets and backbones, then installed and given plug-ins."""
    import cmkd_bench.datasets  # noqa: F401  (registers by import)
    import cmkd_bench.methods  # noqa: F401
    from .models import backbones, small_resnet, text_backbones  # noqa: F401

    load_entry_point_plugins()
    for path in plugin_files:
        load_plugin_file(path)
