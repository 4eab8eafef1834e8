"""Where a run's numbers come from besides its settings: the device, library versions, code revision.

Records store these (runner.base_record) and records.environment_signature compares them.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from .. import __version__
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
            "source": source_digest(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform()}


def cpu_model(cpuinfo: str | None = None, capability: str | None = None) -> str | None:
    """The CPU as results depend on it: its model name (Linux: /proc/cpuinfo), then, where known, its family
    and model numbers and the instruction set torch's kernels dispatch to (`torch.backends.cpu.
    get_cpu_capability()`), e.g. "AMD EPYC (family 25 model 17, AVX512)". CPU results depend on them: the
    same code, versions, threads and seed gave kd on synth-it test 77.3 on the machine the v1 leaderboard
    was made on and 76.1 on an AMD EPYC; and two hosts that both call themselves "AMD EPYC" trained
    different synth-it teachers from the same seed (val 45.40 and 45.25), which the bare model name could
    not tell apart. `cpuinfo` and `capability` are for tests (default: this machine's)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if not key.strip():
            break  # the first processor's block is enough
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or None
    if name is None:
        return None
    if capability is None:
        try:
            import torch
            capability = str(torch.backends.cpu.get_cpu_capability())
        except (ImportError, AttributeError, RuntimeError):
            capability = ""
    detail = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields and "model" in fields else []
    detail += [capability] if capability else []
    return f"{name} ({', '.join(detail)})" if detail else name


# What the suite writes into its own checkout: records, tables, figures, analyses, the README's table.
# They are results, not code: a change there does not make a record's revision "-dirty" (a
# leaderboard regeneration rewrites the tables between its invocations) and does not make
# leaderboard/regenerate.py or leaderboard/analysis.py refuse to run. Prefixes of paths from the top.
GENERATED = ("leaderboard/runs/", "leaderboard/runs-", "leaderboard/sweeps/", "leaderboard/analysis/",
             "leaderboard/figures/", "leaderboard/LEADERBOARD", "leaderboard/ANALYSIS.md", "leaderboard/METHOD_COST.md",
             "leaderboard/leaderboard.csv", "leaderboard/leaderboard.html", "README.md")


def git_revision() -> str | None:
    """The revision of the source tree cmkd_bench runs from, if it is a git checkout, with "-dirty"
    where a tracked file other than the GENERATED results differs from it."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    changed = uncommitted_files(here, GENERATED, untracked=False)
    return out.stdout.strip() + ("-dirty" if changed else "")


# The tracked paths a run's numbers can depend on: the harness, the methods, the datasets and what
# installs them. A commit that changes nothing here (new records, tables, docs, tests) leaves the digest
# as it was, so a leaderboard regenerated over several sittings, its tables committed between them,
# is one source (records.environment_signature compares it in place of the revision).
SOURCE_PATHS = ("cmkd_bench", "methods", "datasets", "pyproject.toml", "constraints.txt")


def source_digest(here: Path = Path(__file__).resolve().parent) -> str | None:
    """The git objects of SOURCE_PATHS at HEAD of the checkout holding `here` (by default the one
    cmkd_bench runs from), hashed (12 hex digits), with "-dirty" where one of them has uncommitted
    changes; None outside a git checkout."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if top.returncode != 0:
            return None
        tree = subprocess.run(["git", "ls-tree", "HEAD", "--", *SOURCE_PATHS], cwd=top.stdout.strip(),
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if tree.returncode != 0 or not tree.stdout.strip():
        return None
    changed = uncommitted_files(here, untracked=False) or []
    dirty = any(path == source or path.startswith(source + "/") for path in changed for source in SOURCE_PATHS)
    return hashlib.sha256(tree.stdout.encode()).hexdigest()[:12] + ("-dirty" if dirty else "")


def uncommitted_files(root: Path, ignore: tuple[str, ...] = (), untracked: bool = True) -> list[str] | None:
    """The files of the git checkout at `root` that differ from its revision (modified, added,
    deleted, and with `untracked` untracked and not ignored), except those under the `ignore`
    prefixes (paths relative to the checkout's top); None where `root` is no git checkout."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        listing = "all" if untracked else "no"
        status = subprocess.run(["git", "status", "--porcelain", "-z", f"--untracked-files={listing}"], cwd=root,
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


# -- the code a record was made with ------------------------------------------------------------------
HARNESS = Path(__file__).resolve().parents[1]  # cmkd_bench/: the method contract is not the method's code


def code_digest(factory: Any) -> dict[str, Any]:
    """The files that hold a registered method's code and one digest of them: the class a factory is
    (and its bases outside the harness and torch) or the file of a factory function. A plug-in's file
    is covered like a built-in's. The digest reads the code, not its text: docstrings, comments,
    formatting and import lines do not count, so a documentation edit does not make earlier records
    stale while a change of what the code computes does. Helpers the file imports (cmkd_bench.losses,
    the engine) are not covered; the record's git revision is."""
    files = []
    for obj in (inspect.getmro(factory) if inspect.isclass(factory) else (factory,)):
        source = _source_file(obj)
        if source is None or Path(source).resolve().is_relative_to(HARNESS) and "methods" not in Path(source).parts:
            continue
        if "site-packages" in Path(source).parts and "cmkd_bench" not in Path(source).parts:
            continue  # torch.nn.Module and the like
        if source not in files:
            files.append(source)
    digest = hashlib.sha256()
    for source in files:
        digest.update(_code_text(Path(source)).encode())
    return {"files": [_label(Path(source)) for source in files], "digest": digest.hexdigest()[:16]}


def _source_file(obj: Any) -> str | None:
    """The file that defines a class or function; for a class of a module no longer in sys.modules
    (a plug-in file loaded by path), the file its methods' code comes from."""
    try:
        return inspect.getsourcefile(obj)
    except TypeError:  # a builtin (object), or a class whose module is not in sys.modules
        pass
    for value in vars(obj).values() if inspect.isclass(obj) else ():
        if inspect.isfunction(value):
            return value.__code__.co_filename
    return None


def _code_text(path: Path) -> str:
    """The module's code as ast.unparse prints it, without docstrings and imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        kept = [stmt for stmt in body if not isinstance(stmt, (ast.Import, ast.ImportFrom))]
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and kept
                and isinstance(kept[0], ast.Expr) and isinstance(kept[0].value, ast.Constant)
                and isinstance(kept[0].value.value, str)):
            kept = kept[1:]
        node.body = kept or [ast.Pass()]
    return ast.unparse(tree)


def _label(path: Path) -> str:
    """methods/kd.py for a built-in (wherever it is installed), the file's name for a plug-in."""
    parts = path.resolve().parts
    if "methods" in parts and parts[-2] == "methods":
        return f"methods/{path.name}"
    return path.name
