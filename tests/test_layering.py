"""The package's layers, read from every module's imports (ast; lazy imports inside functions count).

    methods/            one file per method: imports the harness, never another method nor the CLI
    cmkd_bench/ (harness, cli/ aside), datasets/
                        never import a method module (what methods share is in cmkd_bench/losses.py);
                        cmkd_bench/catalog.py importing the methods package, to register them, is the one exception
    cmkd_bench/cli/     the only importer of cmkd_bench.cli (and `python -m cmkd_bench`'s __main__.py), and of click
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
    assert "cmkd_bench.clips" in IMPORTS["cmkd_bench.datasets._av_common"]
    assert len([name for name in MODULES if within(name, METHODS)]) > 10


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
