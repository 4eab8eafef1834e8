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
PROTOCOLS = (1, 2)
SELECTION_SEED = 1000  # protocol 2: the seed candidates run on, never one of the reported seeds
# Protocol 2's recipe study: factors of the dataset's own learning rate and weight decay (4 x 3 points, K drawn)
RECIPE_FACTORS = {"lr": (0.2, 0.5, 1.0, 2.0), "weight_decay": (0.1, 1.0, 10.0)}


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
    """How a suite tunes. Protocol 1: each method's space, candidates on the first seed, which is also
    reported. Protocol 2 (issue 30): every study spends exactly `budget` (a space smaller than it is an
    error), candidates run on `selection_seed` (never a reported seed), the dataset's recipe is tuned
    first on no-kd (`recipe`: factors of the dataset's values, or None for RECIPE_FACTORS) and is every
    run's recipe, and `defaults` (true, or a list of methods) also runs those methods' official
    defaults on the reported seeds, under the tuned recipe (the leaderboard's defaults appendix)."""
    budget: int = DEFAULT_BUDGET
    spaces: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...] = ()  # overrides per method
    sample_seed: int = SAMPLE_SEED
    protocol: int = 1
    selection_seed: int = SELECTION_SEED
    recipe: tuple[tuple[str, tuple[float, ...]], ...] | None = None  # protocol 2: {recipe key: factors}
    defaults: bool | tuple[str, ...] = False  # protocol 2: also report every (true) or these methods' defaults

    @property
    def recipe_factors(self) -> dict[str, tuple[float, ...]]:
        return dict(self.recipe) if self.recipe is not None else dict(RECIPE_FACTORS)

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
    if base is not None and not entry.meta.get("own_search_space"):
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
    """At most `budget` configurations: the defaults first (when in the space), then, when the space
    is larger than the budget, a seeded draw that covers every axis value it can: the points are
    shuffled with `sample_seed`, then taken greedily by how many of their values no chosen point has
    yet (ties in shuffled order). So a loss weight's every value is tried when the budget allows,
    not only those a uniform draw happens to hit."""
    check_budget(budget)
    keys = [key for key, _ in space.axes]
    points = [dict(zip(keys, values)) for values in itertools.product(*(values for _, values in space.axes))]
    default = {key: defaults[key] for key in keys}
    first = [point for point in points if point == default]
    rest = [point for point in points if point != default]
    room = budget - len(first)
    if len(rest) <= room:
        return first + rest
    order = list(range(len(rest)))
    random.Random(sample_seed).shuffle(order)
    covered = {(key, _hashable(value)) for point in first for key, value in point.items()}
    chosen: list[int] = []
    while len(chosen) < room:
        def new_values(index: int) -> int:
            return sum((key, _hashable(value)) not in covered for key, value in rest[index].items())
        best = max((index for index in order if index not in chosen), key=new_values)  # max keeps the first of ties
        chosen.append(best)
        covered.update((key, _hashable(value)) for key, value in rest[best].items())
    return first + [rest[index] for index in chosen]


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


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

TUNE_KEYS = ("budget", "sample_seed", "spaces", "protocol", "selection_seed", "recipe", "defaults")


def settings_from_mapping(raw: Any, where: str) -> TuneSettings:
    """A suite file's `tune:` value: true, or {budget: N, sample_seed: S, spaces: {METHOD: {KEY: [VALUES]}},
    protocol: 1|2, selection_seed: S, recipe: {lr: [FACTORS], weight_decay: [FACTORS]}, defaults: BOOL}."""
    if raw is True:
        return TuneSettings()
    if not isinstance(raw, dict):
        raise UserError(f"{where}: tune must be true or a mapping with {', '.join(TUNE_KEYS)}; got {raw!r}")
    unknown = sorted(set(raw) - set(TUNE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown tune key {unknown[0]!r}; tune keys are {', '.join(TUNE_KEYS)}")
    budget = check_budget(raw.get("budget", DEFAULT_BUDGET))
    seed = _integer(raw.get("sample_seed", SAMPLE_SEED), "sample_seed", where)
    spaces = raw.get("spaces") or {}
    if not isinstance(spaces, dict) or not all(isinstance(v, dict) for v in spaces.values()):
        raise UserError(f"{where}: tune spaces must map METHOD: {{KEY: [VALUES]}}")
    parsed = tuple((str(method), tuple((str(k), tuple(v if isinstance(v, list) else [v])) for k, v in axes.items()))
                   for method, axes in spaces.items())
    protocol = _integer(raw.get("protocol", 1), "protocol", where)
    if protocol not in PROTOCOLS:
        raise UserError(f"{where}: tune protocol must be one of {', '.join(map(str, PROTOCOLS))}, got {protocol}")
    selection_seed = _integer(raw.get("selection_seed", SELECTION_SEED), "selection_seed", where)
    defaults = raw.get("defaults", False)
    if isinstance(defaults, list) and all(isinstance(name, str) for name in defaults):
        defaults = tuple(defaults)  # names checked when the suite runs (plug-ins are loaded by then)
    elif not isinstance(defaults, bool):
        raise UserError(f"{where}: tune defaults must be true, false or a list of methods, got {defaults!r}")
    if protocol < 2 and any(key in raw for key in ("selection_seed", "recipe", "defaults")):
        raise UserError(f"{where}: tune selection_seed, recipe and defaults belong to protocol 2; add protocol: 2")
    return TuneSettings(budget=budget, spaces=parsed, sample_seed=seed, protocol=protocol,
                        selection_seed=selection_seed, recipe=_recipe_factors(raw.get("recipe"), where),
                        defaults=defaults)


def _integer(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: tune {key} must be an integer, got {value!r}")
    return value


def _recipe_factors(raw: Any, where: str) -> tuple[tuple[str, tuple[float, ...]], ...] | None:
    """`recipe: {lr: [0.2, 0.5, 1, 2], weight_decay: [0.1, 1, 10]}`: factors of the dataset's own values."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}: tune recipe must map a recipe key to factors, e.g. {{lr: [0.5, 1, 2]}}")
    axes = []
    for key, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if key not in RECIPE_FACTORS or not values or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values):
            raise UserError(f"{where}: tune recipe {key!r}: give positive factors of one of "
                            f"{', '.join(RECIPE_FACTORS)}, e.g. {key}: [0.5, 1, 2]")
        if 1 not in values:
            raise UserError(f"{where}: tune recipe {key!r}: the factors must include 1 (the dataset's own value is "
                            f"always a candidate), got {values!r}")
        axes.append((str(key), tuple(float(v) for v in values)))
    return tuple(axes)
