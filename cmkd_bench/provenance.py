"""Where a run's numbers come from besides its settings: the device, library versions, code revision.

Records store these (runner.base_record) and records.environment_signature compares them.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .records import NUMERIC_LIBRARIES


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **library_versions(), "cmkd_bench": __version__}


def library_versions() -> dict[str, str]:
    """The installed version of each library that changes a run's numbers (records.NUMERIC_LIBRARIES)."""
    from importlib import metadata

    found = {}
    for name in NUMERIC_LIBRARIES:
        try:
            found[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["torch"] = torch.__version__
    return found


def environment() -> dict[str, Any]:
    """What a run's numbers depend on besides its settings (records.environment_signature reads it):
    the libraries' versions, the CPU threads torch uses, the code revision, the Python and device."""
    return {"libraries": library_versions(), "threads": torch.get_num_threads(), "git_revision": git_revision(),
            "python": platform.python_version(), "platform": platform.platform()}


def git_revision() -> str | None:
    """The revision of the source tree cmkd_bench runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def uncommitted_files(root: Path, ignore: tuple[str, ...] = ()) -> list[str] | None:
    """The files of the git checkout at `root` that differ from its revision (modified, added,
    deleted, untracked and not ignored), except those under the `ignore` prefixes (paths relative to
    the checkout's top); None where `root` is no git checkout."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if top.returncode != 0 or status.returncode != 0:
        return None
    entries = status.stdout.split("\0")
    files, index = [], 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        if entry[0] in "RC":  # a rename or copy: the source path follows
            index += 1
        path = entry[3:]
        if not any(path == prefix.rstrip("/") or path.startswith(prefix) for prefix in ignore):
            files.append(path)
    return sorted(files)
