"""The content of a prepared folder, recorded when `prepare` writes it and checked before it is used.

    ROOT/checksums.json   {"version": 1, "files": {RELATIVE PATH: {"sha256", "size", "mtime_ns"}}}

`prepare` writes it last (`write_checksums`). Loading a prepared folder (`check_prepared`) stats every
listed file: one missing or of another size is refused; one whose modification time changed is hashed
and refused if its content differs (a file rewritten in place, such as a waveform overwritten with
NaN). A copy that kept no modification times (`cp` without -p) is therefore hashed whole on each load;
`cp -p` or `rsync -t` keeps loads at one stat per file. `verify_prepared` (`cmkd-bench verify ROOT`)
hashes every file and also reads every .npy array for NaN or infinite values. A folder prepared before
checksums existed has no checksums.json: it is not checked (prepare it again to get one).
The run id names the recorded content (`content_fingerprint`), not only clips.csv.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artefacts.files import TEMPORARY_GLOB, file_sha256, write_json_atomic
from ..errors import UserError

CHECKSUMS_JSON = "checksums.json"
VERSION = 1
# The packed store (cmkd_bench/data/packed.py) is made from the prepared files: listed, checked and verified
# like every file, but left out of the content fingerprint (it names what the store was made from, and
# a run's dataset options name which store it read).
DERIVED_FOLDER = "packed"


def _listed_files(root: Path) -> list[Path]:
    temporaries = set(root.rglob(TEMPORARY_GLOB))
    return sorted(path for path in root.rglob("*")
                  if path.is_file() and path.name != CHECKSUMS_JSON and path not in temporaries
                  and not any(parent in temporaries for parent in path.parents))


def write_checksums(root: Path) -> int:
    """Record every file under `root` (its SHA-256, size and modification time); returns how many."""
    files = {}
    for path in _listed_files(root):
        stat = path.stat()
        files[path.relative_to(root).as_posix()] = {"sha256": file_sha256(path), "size": stat.st_size,
                                                    "mtime_ns": stat.st_mtime_ns}
    write_json_atomic({"version": VERSION, "files": files}, root / CHECKSUMS_JSON)
    return len(files)


def read_checksums(root: Path) -> dict[str, dict[str, Any]] | None:
    """The recorded files, or None for a folder prepared before checksums existed."""
    path = root / CHECKSUMS_JSON
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v and "size" in v
                                                  for v in files.values()):
            raise ValueError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise UserError(f"{str(path)!r} is damaged (not the checksums `prepare` writes); prepare the data again") \
            from None
    return files


def content_fingerprint(root: Path) -> str | None:
    """16 hex digits naming the recorded content of every prepared file but the derived store's; None
    without checksums.json."""
    files = read_checksums(root)
    if files is None:
        return None
    listing = "".join(f"{name}\0{entry['sha256']}\n" for name, entry in sorted(files.items())
                      if not name.startswith(DERIVED_FOLDER + "/"))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _problem(root: Path, name: str, entry: dict[str, Any], deep: bool) -> str | None:
    path = root / name
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.st_size != entry["size"]:
        return f"has {stat.st_size} bytes, {entry['size']} when prepared (damaged or truncated)"
    if deep or stat.st_mtime_ns != entry.get("mtime_ns"):
        try:
            if file_sha256(path) != entry["sha256"]:
                return "is damaged: its content does not match the SHA-256 recorded when it was prepared"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
    if deep and path.suffix == ".npy":
        return _non_finite(path)
    return None


def _non_finite(path: Path) -> str | None:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        return f"is not a readable .npy file ({type(exc).__name__})"
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        return "holds NaN or infinite values"
    return None


def check_prepared(root: Path, dataset: str) -> None:
    """Before a prepared folder is used: refuse (one line naming the file) one listed file missing, resized or
    rewritten with other content. Quiet for a folder without checksums.json."""
    files = read_checksums(root)
    if files is None:
        return
    for name, entry in files.items():
        problem = _problem(root, name, entry, deep=False)
        if problem is not None:
            raise UserError(f"{dataset}: prepared file {str(root / name)!r} {problem}; "
                            f"run `cmkd-bench verify {root}` for every damaged file, then prepare the dataset again "
                            f"(`cmkd-bench prepare {dataset} --src RAW_DIR --dst {root} --force`)")


@dataclass
class VerifyReport:
    checked: int
    problems: list[tuple[str, str]] = field(default_factory=list)  # (relative path, what is wrong)


def verify_prepared(root: Path) -> VerifyReport:
    """Hash every recorded file and read every .npy array for non-finite values."""
    files = read_checksums(root)
    if files is None:
        raise UserError(f"{str(root)!r} has no {CHECKSUMS_JSON} (not a prepared folder, or prepared before "
                        "checksums existed); prepare it again to get one")
    report = VerifyReport(len(files))
    for name, entry in files.items():
        problem = _problem(root, name, entry, deep=True)
        if problem is not None:
            report.problems.append((name, problem))
    return report
