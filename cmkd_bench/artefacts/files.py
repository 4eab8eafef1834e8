"""Files: written whole or not at all, by one process, named safely; weights read with one clear error.

Every write goes to a temporary name beside the target (`NAME.tmp-PID`) and is renamed over it, so
a reader (or an interrupted run) never sees half a file. Under torchrun only rank 0 writes. A write
the OS refuses (a full disk, no permission) is one line naming the file and the OS's reason
(`UserError`, exit 2), with its temporary file removed; `sweep_temporaries` removes those a killed
process left. Every torch file the harness writes (`atomic_save`) has its SHA-256 beside it
(`NAME.sha256`, in `sha256sum` format), and `load_checked` reads it back only if the content matches.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
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


def write_failed(path: Path, exc: OSError) -> "UserError":
    """The one line for a write the OS refused: the file, the OS's reason, what to do."""
    from ..errors import UserError

    reason = exc.strerror or str(exc) or type(exc).__name__
    name = errno.errorcode.get(exc.errno or 0, "")
    advice = ("free some space (or pass another --out) and run the same command again; a run resumes from its "
              "last finished epoch") if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
        "fix the folder's permissions or pass another --out, then run the same command again"
    return UserError(f"cannot write {str(path)!r}: {reason}{f' ({name})' if name else ''}; {advice}")


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` a file at a temporary name beside `path`, then rename it over `path`; rank 0 only.

    A failed write leaves `path` as it was and removes the temporary file; one the OS refuses
    (OSError: no space left, no permission) is a one-line UserError naming `path` and the reason."""
    if not is_main_process():
        return
    path = Path(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(data: bytes, path: Path) -> None:
    """`data` to `path` (not atomic: `write_bytes_atomic` writes through it; tests inject disk faults here)."""
    with open(path, "wb") as handle:
        handle.write(data)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """`data` to `path`, atomically; rank 0 only."""
    write_atomic(path, lambda tmp: write_bytes(data, tmp))


def digest_file(path: Path) -> Path:
    """Where the SHA-256 of a file `atomic_save` wrote is kept: `NAME.sha256` beside it."""
    return Path(path).with_name(Path(path).name + ".sha256")


def _listed_digests(path: Path) -> list[str]:
    try:
        text = digest_file(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return []
    return [line.split()[0] for line in text.splitlines() if line.split()]


def _digest_lines(digests: list[str], path: Path) -> bytes:
    return "".join(f"{digest}  {Path(path).name}\n" for digest in digests).encode("ascii")


def atomic_save(obj: Any, path: Path) -> str | None:
    """`torch.save` to `path`, atomically, with its SHA-256 in `NAME.sha256`; rank 0 only. Returns the
    SHA-256 (None on the other ranks), for a metadata file that names the weights it goes with.

    The object is serialised in memory first, so a full disk is an OSError (one line, see
    `write_atomic`) rather than a torch enforce-fail. The two files cannot change together, so the
    digest file first lists the new digest and the current file's (if it checks), then the file is
    renamed into place, then the digest file lists the new one only: a kill at any moment leaves a
    file whose digest is listed."""
    import torch

    if not is_main_process():
        return None
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    new = hashlib.sha256(data).hexdigest()
    current = file_sha256(path) if path.is_file() and _listed_digests(path) else None
    keep = [current] if current is not None and current != new and current in _listed_digests(path) else []
    write_bytes_atomic(_digest_lines([new, *keep], path), digest_file(path))
    write_bytes_atomic(data, path)
    if keep:
        write_bytes_atomic(_digest_lines([new], path), digest_file(path))
    return new


def remove_saved(path: Path) -> None:
    """Remove a file `atomic_save` wrote and its digest file (the file first: never a file without a digest)."""
    Path(path).unlink(missing_ok=True)
    digest_file(path).unlink(missing_ok=True)


def check_digest(path: Path, what: str, rebuild: str, required: bool = True) -> None:
    """Refuse (one line naming the file and `rebuild`, the command that makes it again) a file whose
    content is not what `atomic_save` wrote: damaged, truncated, or (when `required`) with no digest."""
    from ..errors import UserError

    path = Path(path)
    listed = _listed_digests(path)
    if not listed:
        if digest_file(path).exists():
            raise UserError(f"{what} {str(path)!r} cannot be checked: {digest_file(path).name} is damaged; {rebuild}")
        if required:
            raise UserError(f"{what} {str(path)!r} has no content hash ({digest_file(path).name}), so it cannot be "
                            f"checked for damage; {rebuild}")
        return
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise UserError(f"{what} {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); {rebuild}") from exc
    if actual not in listed:
        raise UserError(f"{what} {str(path)!r} is damaged: its content does not match the SHA-256 stored when it "
                        f"was written ({digest_file(path).name}); {rebuild}")


def load_checked(path: Path, what: str, rebuild: str, device: Any = "cpu") -> Any:
    """`torch.load` (weights only) of a file `atomic_save` wrote, after `check_digest`; one line if unreadable."""
    import torch

    from ..errors import UserError

    check_digest(path, what, rebuild)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise UserError(f"{what} {str(path)!r} cannot be read ({type(exc).__name__}); {rebuild}") from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files (`NAME.tmp-PID`, see `temporary`) that processes no longer alive left in
    `folder` (a kill mid-write); those of a live process are its writes under way. Returns what went."""
    import shutil

    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for stale in folder.glob(TEMPORARY_GLOB):
        pid = stale.name.rsplit(".tmp-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


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

    from ..errors import UserError

    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: creating the folder would fail
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == target else f"is under {str(existing)!r}, which is a file"
        raise UserError(f"{option} {str(target)!r} {where}, not a folder; pass a folder to write in")
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


REPLACE_FILE = "pass an undamaged copy of the file"


def read_state_dict(path: Path, device: Any = "cpu", what: str = "weights file",
                    rebuild: str = REPLACE_FILE) -> dict[str, Any]:
    """The tensors of a weights file, by name; every way it can fail is one line naming `what` and the file.

    A file with a digest beside it (`NAME.sha256`: one the harness wrote) is checked against it first;
    a mismatch names the file and `rebuild`, the command that makes it again.

    Reads a torch state_dict (.pt/.pth; bare, or wrapped as {"state_dict": ...} or {"model": ...})
    or a .safetensors file (with the safetensors package, which comes with timm). Keys are as stored.
    """
    import torch

    from ..errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist; pass the path of a .pt, .pth or .safetensors file")
    check_digest(path, what, rebuild, required=False)
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


def load_weights(model: Any, path: Path, device: Any, what: str = "teacher checkpoint",
                 rebuild: str = REPLACE_FILE) -> None:
    """Load a state_dict file into a FeatureModel, strictly; every way it can fail is one line naming `what` and the file.

    Takes the harness's own files (keys under `net.`), a bare timm/torchvision model's state_dict,
    or one wrapped as {"state_dict": ...} or {"model": ...}; a mismatch names the first keys that
    differ and how many (use --teacher-init / --student-init to load what fits and adapt the rest).
    """
    from ..errors import UserError

    state = read_state_dict(path, device, what, rebuild)
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
