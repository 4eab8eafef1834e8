"""The package's layers, read from every module's imports (ast; lazy and TYPE_CHECKING imports count).

Rooms, bottom up (a module may import its own room and the rooms below it, never one above):

    the contract        cmkd_bench/__init__, errors, registry, losses, distributed (what a plug-in imports)
    artefacts/          files, run records, provenance: what training writes and reporting reads
    data/               the dataset declaration, loaders, the packed store, media, prepare
    models/             feature models and backbones
    method              the Method contract (method.py) and how a recipe trains (recipes.py)
    datasets/, methods/ one file per dataset / method
    catalog             registers the built-ins and plug-ins (imports the methods and datasets packages)
    training/           configuration, engine, runner
    reporting/          leaderboard tables, plots, analyses
    experiments/        suites, tuning, scheduling, executors
    cli/                every click command (and `python -m cmkd_bench`'s __main__.py)

Besides: no import circles between modules; a method imports no other method; the harness
imports no method (catalog importing the methods package, to register them, is the one
exception); only cli/ imports the CLI and click.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# where each folder installs (pyproject.toml's package-dir)
PACKAGES = {"cmkd_bench": REPO / "cmkd_bench", "cmkd_bench.methods": REPO / "methods",
            "cmkd_bench.datasets": REPO / "datasets"}
METHODS, CLI = "cmkd_bench.methods", "cmkd_bench.cli"
REGISTERS_THE_METHODS = "cmkd_bench.catalog"
ENTRY_POINT = "cmkd_bench.__main__"  # `python -m cmkd_bench` runs the CLI
# modules outside cmkd_bench/cli/ that still import click while the commands move into cli/ (issue 14);
# empty it once they are done
CLICK_PENDING: set[str] = set()


def module_name(path: Path) -> str:
    for package, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([package, *parts])
    raise ValueError(path)


def package_modules() -> dict[str, Path]:
    modules = {}
    for folder in PACKAGES.values():
        for path in sorted(folder.rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imported(name: str, path: Path) -> set[str]:
    """Every module `path` may import: `import a.b` gives a.b; `from a import b` gives a and a.b
    (b may be a submodule); relative imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


MODULES = package_modules()
IMPORTS = {name: imported(name, path) for name, path in MODULES.items()}
HARNESS = [name for name in MODULES if not within(name, METHODS) and not within(name, CLI)]
SCRIPTS = {f"benchmarks.{path.stem}": path for path in sorted((REPO / "benchmarks").glob("*.py"))}


def test_the_reader_sees_the_imports_it_must_judge() -> None:
    """Guards the rest against passing vacuously: known imports, absolute, relative and lazy, are found."""
    assert "cmkd_bench.losses" in IMPORTS["cmkd_bench.methods.kd"]
    assert {"cmkd_bench.methods.fd", "cmkd_bench.methods.kd"} <= IMPORTS["cmkd_bench.methods"]  # from . import fd, ...
    assert "cmkd_bench.methods" in IMPORTS["cmkd_bench.catalog"]  # inside load_all()
    assert "cmkd_bench.datasets.rgbd_augment" in IMPORTS["cmkd_bench.datasets.nyuv2"]  # inside a function
    assert "cmkd_bench.data.clips" in IMPORTS["cmkd_bench.datasets._av_common"]
    assert "cmkd_bench.reporting.leaderboard.published" in IMPORTS["cmkd_bench.reporting.leaderboard.render_csv"]  # TYPE_CHECKING
    assert len([name for name in MODULES if within(name, METHODS)]) > 10


# The rooms, bottom up; a module is in the first room whose prefix it has (longest prefix wins).
ROOMS = [
    ("contract", ("cmkd_bench", "cmkd_bench.errors", "cmkd_bench.registry", "cmkd_bench.losses",
                  "cmkd_bench.distributed")),
    ("artefacts", ("cmkd_bench.artefacts",)),
    ("data", ("cmkd_bench.data",)),
    ("models", ("cmkd_bench.models",)),
    ("method", ("cmkd_bench.method", "cmkd_bench.recipes")),
    ("plug-ins", ("cmkd_bench.datasets", "cmkd_bench.methods")),
    ("catalog", ("cmkd_bench.catalog",)),
    ("training", ("cmkd_bench.training",)),
    ("reporting", ("cmkd_bench.reporting",)),
    ("experiments", ("cmkd_bench.experiments",)),
    ("cli", ("cmkd_bench.cli", ENTRY_POINT)),
]
FLOOR = {room: floor for floor, (room, _) in enumerate(ROOMS)}


def room_of(module: str) -> str:
    """The room of a module: the longest matching prefix (`cmkd_bench` alone is the package face)."""
    best = None
    for room, prefixes in ROOMS:
        for prefix in prefixes:
            exact_only = prefix == "cmkd_bench"
            if (module == prefix or (not exact_only and within(module, prefix))) and \
                    (best is None or len(prefix) > len(best[1])):
                best = (room, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no room: add it to tests/test_layering.py's ROOMS "
                             f"(or move it into a subpackage that is)")
    return best[0]


def internal(found: set[str]) -> set[str]:
    """The package's own modules among an import's names (`from a import b` also names b, a class)."""
    return {m for m in found if m in MODULES}


def test_every_module_has_a_room_and_at_most_a_dozen_stay_at_the_top() -> None:
    for name in MODULES:
        room_of(name)
    top = sorted(p.name for p in (REPO / "cmkd_bench").glob("*.py"))
    assert len(top) <= 12, f"cmkd_bench/ holds {len(top)} modules at its top ({', '.join(top)}); move them into rooms"


def test_no_module_imports_a_room_above_its_own() -> None:
    wrong = []
    for name, found in IMPORTS.items():
        floor = FLOOR[room_of(name)]
        for target in sorted(internal(found)):
            if FLOOR[room_of(target)] > floor:
                wrong.append(f"{name} ({room_of(name)}) imports {target} ({room_of(target)})")
    assert not wrong, "imports that run up the layers (move what both need down a floor):\n" + "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    """Guards the next test against passing vacuously."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    # a package's __init__ importing its own submodules is how it shows its face, not a circle:
    # a submodule naming its package (`from . import x`) is counted as importing x only
    graph = {name: {m for m in internal(found) if m != name and not (name.startswith(m + "."))}
             for name, found in IMPORTS.items()}
    circles = cycles(graph)
    assert not circles, "import circles (move what both sides need down a floor): " + \
        "; ".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize("name", sorted(name for name in MODULES if within(name, METHODS) and name != METHODS))
def test_a_method_imports_no_other_method_and_not_the_cli(name: str) -> None:
    wrong = sorted(m for m in IMPORTS[name]
                   if (within(m, METHODS) and m != name) or within(m, CLI))
    assert not wrong, (f"{MODULES[name]} imports {', '.join(wrong)}: a method imports the harness only; move what "
                       f"methods share to cmkd_bench/losses.py (a preset's base is registered first by methods/__init__.py)")


def test_the_harness_imports_no_method() -> None:
    wrong = {name: sorted(m for m in IMPORTS[name] if within(m, METHODS)) for name in HARNESS}
    wrong[REGISTERS_THE_METHODS] = [m for m in wrong.get(REGISTERS_THE_METHODS, []) if m != METHODS]
    wrong = {name: modules for name, modules in wrong.items() if modules}
    assert not wrong, f"harness modules import methods (use cmkd_bench/losses.py, or the METHODS registry): {wrong}"


def test_only_the_cli_imports_the_cli() -> None:
    importers = {**{name: IMPORTS[name] for name in MODULES if not within(name, CLI) and name != ENTRY_POINT},
                 **{name: imported(name, path) for name, path in SCRIPTS.items()}}
    wrong = {name: sorted(m for m in found if within(m, CLI)) for name, found in importers.items()}
    wrong = {name: modules for name, modules in wrong.items() if modules}
    assert not wrong, f"only cmkd_bench/cli/ may import the CLI: {wrong}"


def test_only_the_cli_imports_click() -> None:
    importers = {**{name: IMPORTS[name] for name in MODULES if not within(name, CLI)},
                 **{name: imported(name, path) for name, path in SCRIPTS.items()}}
    offenders = {name for name, found in importers.items() if any(within(m, "click") for m in found)}
    assert offenders <= CLICK_PENDING, f"click outside cmkd_bench/cli/: {sorted(offenders - CLICK_PENDING)}"
