"""One registry class, used for METHODS, DATASETS and BACKBONES.

A factory registers under a name with aliases and metadata; its hyper-parameters (keyword
arguments with defaults) are read from its signature, so a method's constructor is the single
source of truth for what `--set key=value` may change.
"""

from __future__ import annotations

import difflib
import functools
import fnmatch
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError

PLUGIN_GROUP = "cmkd_bench.plugins"
PLUGINS_VARIABLE = "CMKD_BENCH_PLUGINS"  # plug-in files every command loads, os.pathsep-separated
PLUGIN_HINT = "--plugin FILE.py or CMKD_BENCH_PLUGINS=FILE.py"


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    aliases: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("classification",)
    description: str = ""
    reference: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    hparam_types: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def supports(self, task: str) -> bool:
        return task in self.tasks

    @property
    def implementation(self) -> Callable[..., Any]:
        """The class or function behind the factory: a preset's factory is its base's with other
        defaults (functools.partial), whose code is the base's."""
        factory = self.factory
        while isinstance(factory, functools.partial):
            factory = factory.func
        return factory


def signature_hparams(factory: Callable[..., Any], skip: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword parameters with defaults after the first `skip` positional ones, and their types."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(factory):
        params = params[1:]  # self
    defaults, types = {}, {}
    for p in params[skip:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        defaults[p.name] = p.default
        types[p.name] = p.annotation if p.annotation is not p.empty else type(p.default)
    return defaults, types


class Registry:
    """Names -> factories, with aliases, metadata and a clear error for unknown names.

    `fixed_args` is how many leading constructor arguments the harness passes itself (they are
    not hyper-parameters). `resolvers` handle open families of names, such as any timm model.
    """

    def __init__(self, kind: str, fixed_args: int = 0) -> None:
        self.kind = kind
        self.fixed_args = fixed_args
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._resolvers: list[Callable[[str], Entry | None]] = []
        self._suggestion_pools: list[Callable[[], list[str]]] = []

    def register(
        self,
        name: str,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        tasks: tuple[str, ...] | list[str] = ("classification",),
        description: str = "",
        reference: str = "",
        **meta: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            hparams, types = signature_hparams(factory, self.fixed_args)
            doc = (inspect.getdoc(factory) or "").strip().splitlines()
            entry = Entry(
                name=name,
                factory=factory,
                aliases=tuple(aliases),
                tasks=tuple(tasks),
                description=description or (doc[0] if doc else ""),
                reference=reference,
                hparams=hparams,
                hparam_types=types,
                meta=dict(meta),
            )
            self.add(entry)
            return factory

        return decorator

    def register_preset(self, name: str, base: str, *, description: str, aliases: tuple[str, ...] = (),
                        tasks: tuple[str, ...] | None = None, search_space: dict[str, list[Any]] | None = None,
                        loss_weights: tuple[str, ...] | None = None, **overrides: Any) -> Entry:
        """Register `base` under another name with other defaults (an ablation, a paper's setting).

        The preset's hyper-parameters stay settable with `--set`; records name the preset. It tunes
        its base's search space less the keys it fixes, unless it declares its own `search_space`
        (with the `loss_weights` among its keys), as a preset whose free keys are not its base's must.
        """
        parent = self.get(base)
        unknown = set(overrides) - set(parent.hparams)
        if unknown:
            raise ValueError(f"preset {name!r}: {base!r} has no hyper-parameter {sorted(unknown)[0]!r}")
        entry = Entry(name=name, factory=functools.partial(parent.factory, **overrides), aliases=tuple(aliases),
                      tasks=tuple(tasks) if tasks else parent.tasks, description=description, reference=parent.reference,
                      hparams={**parent.hparams, **overrides}, hparam_types=parent.hparam_types,
                      meta={**parent.meta, "preset_of": parent.name,
                            **({"search_space": search_space, "own_search_space": True,
                                "loss_weights": tuple(loss_weights or ())} if search_space is not None else {})})
        self.add(entry)
        return entry

    def add(self, entry: Entry) -> None:
        """Register `entry`. A name (or alias) another registration holds is refused: a plug-in that
        registers `kd` would otherwise replace the built-in under the built-in's run ids. A plug-in
        that means it says so with `replace=True` (`@METHODS.register("kd", replace=True)`); its runs
        then carry its code in their run id (training.config), so they never pass for the built-in's."""
        for key in (entry.name, *entry.aliases):
            owner = self._aliases.get(key, key if key in self._entries else None)
            if owner is not None and owner != entry.name:
                raise ValueError(f"{self.kind} name {key!r} is already taken by {owner!r}")
        current = self._entries.get(entry.name)
        if current is not None and current.factory is not entry.factory and not entry.meta.get("replace"):
            where = getattr(current.factory, "__module__", None) or "another registration"
            raise ValueError(f"{self.kind} name {entry.name!r} is already registered (by {where}); choose another "
                             f"name, or pass replace=True to register() to replace it on purpose")
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def add_resolver(self, resolver: Callable[[str], Entry | None], suggestions: Callable[[], list[str]] | None = None) -> None:
        self._resolvers.append(resolver)
        if suggestions is not None:
            self._suggestion_pools.append(suggestions)

    def canonical(self, name: str) -> str:
        return self.get(name).name

    def get(self, name: str) -> Entry:
        key = self._aliases.get(name, name)
        if key in self._entries:
            return self._entries[key]
        for resolver in self._resolvers:
            entry = resolver(name)
            if entry is not None:
                return entry
        raise UserError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        pool = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
        if not close:
            for extra in self._suggestion_pools:
                close = difflib.get_close_matches(name, extra(), n=3, cutoff=0.75)
                if close:
                    break
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"see `cmkd-bench list {self.kind}s`"
        return f"unknown {self.kind} {name!r}; {hint} (a plug-in's {self.kind} needs {PLUGIN_HINT})"

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).factory(*args, **kwargs)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UserError:
            return False
        return True

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self, pattern: str = "*", task: str | None = None) -> list[str]:
        return [e.name for e in self if fnmatch.fnmatch(e.name, pattern) and (task is None or e.supports(task))]


# Constructors receive (student, teacher, spec) from the harness; the rest are hyper-parameters.
METHODS = Registry("method", fixed_args=3)
# Factories receive (data_root); the rest are dataset options.
DATASETS = Registry("dataset", fixed_args=1)
# Factories receive (input_shape, num_classes); the rest are backbone options.
BACKBONES = Registry("backbone", fixed_args=2)


def load_plugin_file(path: str | Path, source: str = "--plugin") -> None:
    """Import a user's Python file so that its registrations apply to this command; `source` says where
    the path was given (--plugin, CMKD_BENCH_PLUGINS, a suite file), for the error."""
    path = Path(path)
    if not path.is_file():
        given = "" if source == "--plugin" else f" (in {source})"
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"plugin file {str(path)!r}{given} {what}; pass the path of a .py file")
    module_name = f"cmkd_bench_plugin_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plugin file {str(path)!r} is not a Python module; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as exc:  # a user's file: report, do not crash
        del sys.modules[module_name]
        raise UserError(f"plugin file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc


_loaded_entry_points: set[str] = set()


def load_entry_point_plugins() -> None:
    """Load every installed distribution's `cmkd_bench.plugins` entry point (once each).

    An entry point may name a module (importing it registers) or a callable (called once).
    """
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _loaded_entry_points:
            continue
        try:
            target = ep.load()
        except Exception as exc:
            raise UserError(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
        if callable(target) and not inspect.ismodule(target):
            target()
        _loaded_entry_points.add(key)

