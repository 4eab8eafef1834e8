"""Files: written whole or not at all, by one process, named safely; weights read with one clear error.

Every write goes to a temporary name beside the target (`NAME.tmp-PID`) and is renamed over it, so
a reader (or an interrupted run) never sees half a file. Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

TEMPORARY_GLOB = "*.tmp-*"  # what `temporary` names; an interrupted write leaves one


def is_main_process() -> bool:
    """Only rank 0 writes files once this runs under torchrun."""
    import torch

    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def temporary(path: Path) -> Path:
    """The name `path` is written under before it is renamed into place (one per process)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` a file at a temporary name beside `path`, then rename it over `path`; rank 0 only.

    A failed write leaves `path` as it was (and removes the temporary file)."""
    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to `path`, atomically; rank 0 only."""
    import torch

    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_json_atomic(obj: Any, path: Path) -> None:
    """`obj` as indented JSON (keys in their order, one final newline) to `path`, atomically; rank 0 only."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def write_csv_atomic(header: tuple[str, ...], rows: Iterable[tuple], path: Path) -> None:
    """A header line and rows as CSV to `path`, atomically; rank 0 only."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    write_atomic(path, write)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def slug(text: str) -> str:
    """`text` as a file name: each run of characters other than letters, digits, '.', '_' and '-' becomes '_'.

    Run ids are made with it, so it must not change.
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def file_stem(text: str) -> str:
    """A title as a figure's or table's file name: arrows become '2' (as in run ids' directions), then `slug`,
    without leading or trailing '_'."""
    return slug(text.replace(" → ", "2").replace("→", "2")).strip("_")


def load_weights(model: Any, path: Path, device: Any, what: str = "teacher checkpoint") -> None:
    """Load a state_dict file into a FeatureModel; every way it can fail is one line naming `what` and the file.

    Takes the harness's own files (keys under `net.`), a bare timm/torchvision model's state_dict,
    or one wrapped as {"state_dict": ...} or {"model": ...}.
    """
    import torch

    from .errors import UserError

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise UserError(f"{what} {str(path)!r} cannot be read as a weights file ({type(exc).__name__}); "
                        "pass a torch state_dict .pt") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict):
        raise UserError(f"{what} {str(path)!r} holds no state_dict")
    if not any(str(k).startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}  # a bare model's state_dict
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {str(path)!r} does not fit backbone {model.name!r}: {first}") from exc
