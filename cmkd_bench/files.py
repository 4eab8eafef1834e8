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


def check_writable_dir(path: str | Path, option: str = "--out") -> None:
    """Refuse (one line) a folder that cannot be created or written: a file in its place or on its way,
    or a place no file can be written (/proc, a read-only mount, no permission). Leaves nothing behind."""
    import tempfile

    from .errors import UserError

    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: creating the folder would fail
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == target else f"is under {str(existing)!r}, which is a file"
        raise UserError(f"{option} {str(target)!r} {where}, not a folder; pass a folder to write runs in")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cmkd-write-check-", dir=existing))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{option} {str(target)!r} cannot be written: no folder can be made in {str(existing)!r} "
                        f"({reason}); pass a folder you can write to") from None


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


def read_state_dict(path: Path, device: Any = "cpu", what: str = "weights file") -> dict[str, Any]:
    """The tensors of a weights file, by name; every way it can fail is one line naming `what` and the file.

    Reads a torch state_dict (.pt/.pth; bare, or wrapped as {"state_dict": ...} or {"model": ...})
    or a .safetensors file (with the safetensors package, which comes with timm). Keys are as stored.
    """
    import torch

    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist; pass the path of a .pt, .pth or .safetensors file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{what} {str(path)!r} is a .safetensors file but the safetensors package is not "
                            "installed; pip install safetensors, or pass a torch state_dict .pt") from None
        try:
            state = load_file(str(path), device=str(device))
        except Exception as exc:
            raise UserError(f"{what} {str(path)!r} cannot be read as a safetensors file ({type(exc).__name__})") from exc
    else:
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise UserError(f"{what} {str(path)!r} cannot be read as a weights file ({type(exc).__name__}); "
                            "pass a torch state_dict .pt or a .safetensors file") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} {str(path)!r} holds no state_dict (no named tensors)")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _first(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def mismatch_summary(expected: dict[str, Any], given: dict[str, Any]) -> str | None:
    """None when `given` has exactly `expected`'s tensor names and shapes; else one line naming the first
    missing, unexpected and wrongly shaped keys and how many of each."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {list(given[k].shape)} (model {list(expected[k].shape)})" for k in expected
              if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = [f"{len(found)} {label} ({_first(found)})" for label, found in
             (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)) if found]
    return "; ".join(parts) if parts else None


def load_weights(model: Any, path: Path, device: Any, what: str = "teacher checkpoint") -> None:
    """Load a state_dict file into a FeatureModel, strictly; every way it can fail is one line naming `what` and the file.

    Takes the harness's own files (keys under `net.`), a bare timm/torchvision model's state_dict,
    or one wrapped as {"state_dict": ...} or {"model": ...}; a mismatch names the first keys that
    differ and how many (use --teacher-init / --student-init to load what fits and adapt the rest).
    """
    from .errors import UserError

    state = read_state_dict(path, device, what)
    if not any(str(k).startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}  # a bare model's state_dict
    problem = mismatch_summary(model.state_dict(), state)
    if problem is not None:
        raise UserError(f"{what} {str(path)!r} does not fit backbone {model.name!r}: {problem}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{what} {str(path)!r} does not fit backbone {model.name!r}: {text}") from exc
