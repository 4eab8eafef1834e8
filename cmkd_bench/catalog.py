"""Everything that can be named on the command line: built-ins first, then plug-ins.

Every command loads plug-ins through `load_all`: the installed packages' entry points, the files
named in CMKD_BENCH_PLUGINS (os.pathsep-separated), then the files given (--plugin, a suite file's
`plugins:`). A file is imported once per process, whichever way it was named.
"""

from __future__ import annotations

import os

from .registry import (BACKBONES, DATASETS, METHODS, PLUGINS_VARIABLE, load_entry_point_plugins,
                       load_plugin_file)

__all__ = ["BACKBONES", "DATASETS", "METHODS", "PLUGINS_VARIABLE", "all_plugin_files", "environment_plugins", "load_all"]


def environment_plugins() -> tuple[str, ...]:
    """The files CMKD_BENCH_PLUGINS names, in order."""
    listed = os.environ.get(PLUGINS_VARIABLE, "").split(os.pathsep)
    return tuple(path.strip() for path in listed if path.strip())


def all_plugin_files(given: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """Every plug-in file a command loads, CMKD_BENCH_PLUGINS's first, as absolute paths, each once
    (absolute, so that a suite's run processes load the same files from wherever they start)."""
    return tuple(dict.fromkeys(os.path.abspath(path) for path in (*environment_plugins(), *given)))


def load_all(plugin_files: tuple[str, ...] | list[str] = ()) -> None:
    """Register the built-in methods, datasets and backbones, then installed and given plug-ins."""
    import cmkd_bench.datasets  # noqa: F401  (registers by import)
    import cmkd_bench.methods  # noqa: F401
    from .models import backbones, small_resnet, text_backbones  # noqa: F401

    load_entry_point_plugins()
    for path in environment_plugins():
        load_plugin_file(path, source=PLUGINS_VARIABLE)
    for path in plugin_files:
        load_plugin_file(path)
