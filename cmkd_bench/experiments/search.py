"""Search spaces and tune settings: what a tuning study may try, declared before anything runs.

A method declares a small search space in its registration (`search_space={key: [values]}` on
`METHODS.register`; presets inherit their base's space less the keys they fix). `configurations`
draws at most `budget` of a space's points, the official defaults first; a suite file's `tune:`
and `tune --space` become `TuneSettings`. cmkd_bench.experiments.tuning runs the studies.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import UserError
from ..registry import METHODS, Entry
from ..training.config import coerce

DEFAULT_BUDGET = 8
SAMPLE_SEED = 0  # draws the subset of a space larger than the budget; fixed, so every method draws alike


@dataclass(frozen=True)
class SearchSpace:
    method: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]

    @property
    def size(self) -> int:
        size = 1
        for _, values in self.axes:
            size *= len(values)
        return size

    def as_dict(self) -> dict[str, list[Any]]:
        return {key: list(values) for key, values in self.axes}

@dataclass(frozen=True)
class TuneSettings:
    budget: int = DEFAULT_BUDGET
    spaces: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...] = ()  # overrides per method
    sample_seed: int = SAMPLE_SEED

    def space_for(self, method: str) -> Mapping[str, Sequence[Any]] | None:
        for name, axes in self.spaces:
            if name == method:
                return {key: values for key, values in axes}
        return None


def check_budget(budget: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UserError(f"tuning budget must be an integer of at least 1, got {budget!r}")
    return budget

def search_space(method: str, override: Mapping[str, Sequence[Any]] | None = None) -> SearchSpace:
    """The method's declared search space (or `override`), checked against its hyper-parameters."""
    entry = METHODS.get(method)
    raw = override if override is not None else declared_space(entry)
    if not raw:
        raise UserError(f"method {entry.name!r} declares no search space, so it has nothing to tune (it runs at its "
                        f"defaults); give one with --space KEY=V1,V2 or tune another method")
    axes = []
    for key, values in raw.items():
        if key not in entry.hparams:
            known = ", ".join(entry.hparams) or "none"
            raise UserError(f"search space of {entry.name!r}: {key!r} is not one of its hyper-parameters ({known})")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise UserError(f"search space of {entry.name!r}: {key!r} has no values")
        typed = tuple(dict.fromkeys(_typed(entry, key, value) for value in values))
        axes.append((key, typed))
    return SearchSpace(entry.name, tuple(axes))

def declared_space(entry: Entry) -> dict[str, list[Any]]:
    """The registered space; a preset drops the keys it fixes (tuning them would undo the preset)."""
    space = dict(entry.meta.get("search_space") or {})
    base = entry.meta.get("preset_of")
    if base is not None:
        parent = METHODS.get(base)
        space = {key: values for key, values in space.items() if entry.hparams.get(key) == parent.hparams.get(key)}
    return space

def _typed(entry: Entry, key: str, value: Any) -> Any:
    return coerce(key, setting_text(value), entry.hparams[key], entry.hparam_types.get(key))


def setting_text(value: Any) -> str:
    """A YAML value as the text `--set` parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def configurations(space: SearchSpace, defaults: Mapping[str, Any], budget: int,
                   sample_seed: int = SAMPLE_SEED) -> list[dict[str, Any]]:
    """At most `budget` configurations: the defaults first (when in the space), then the space's order."""
    check_budget(budget)
    keys = [key for key, _ in space.axes]
    points = [dict(zip(keys, values)) for values in itertools.product(*(values for _, values in space.axes))]
    default = {key: defaults[key] for key in keys}
    first = [point for point in points if point == default]
    rest = [point for point in points if point != default]
    room = budget - len(first)
    if len(rest) > room:
        chosen = set(random.Random(sample_seed).sample(range(len(rest)), room))
        rest = [point for index, point in enumerate(rest) if index in chosen]
    return first + rest

def changed_settings(point: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in point.items() if value != defaults[key]}

def parse_space_flags(texts: Sequence[str], method: str | None) -> tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...]:
    """`--space KEY=V1,V2` (repeatable) for the one method given with --method."""
    if not texts:
        return ()
    if method is None:
        raise UserError("--space needs exactly one --method (a space belongs to one method)")
    axes = []
    for text in texts:
        key, sep, values = text.partition("=")
        items = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not key.strip() or not items:
            raise UserError(f"--space {text!r} is not KEY=V1,V2,...; write for example --space T=1,4")
        axes.append((key.strip(), items))
    return ((METHODS.canonical(method), tuple(axes)),)

def settings_from_mapping(raw: Any, where: str) -> TuneSettings:
    """A suite file's `tune:` value: true, or {budget: N, sample_seed: S, spaces: {METHOD: {KEY: [VALUES]}}}."""
    if raw is True:
        return TuneSettings()
    if not isinstance(raw, dict):
        raise UserError(f"{where}: tune must be true or a mapping with budget, sample_seed, spaces; got {raw!r}")
    unknown = sorted(set(raw) - {"budget", "sample_seed", "spaces"})
    if unknown:
        raise UserError(f"{where}: unknown tune key {unknown[0]!r}; tune keys are budget, sample_seed, spaces")
    budget = check_budget(raw.get("budget", DEFAULT_BUDGET))
    seed = raw.get("sample_seed", SAMPLE_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"{where}: tune sample_seed must be an integer, got {seed!r}")
    spaces = raw.get("spaces") or {}
    if not isinstance(spaces, dict) or not all(isinstance(v, dict) for v in spaces.values()):
        raise UserError(f"{where}: tune spaces must map METHOD: {{KEY: [VALUES]}}")
    parsed = tuple((str(method), tuple((str(k), tuple(v if isinstance(v, list) else [v])) for k, v in axes.items()))
                   for method, axes in spaces.items())
    return TuneSettings(budget=budget, spaces=parsed, sample_seed=seed)
