"""Resolving a run's configuration: defaults from the dataset and method, `--set` overrides, run id.

The run id is a stable hash of everything that changes a result (method and its
hyper-parameters, dataset and its options, modalities, backbones, recipe, seed, teacher
checkpoint, the content hash of --student-init / --teacher-init weights, a multimodal teacher's
fusion), so the same command always maps to the same record.

A multimodal teacher (`--teacher-modality visual+audio`, cmkd_bench/models/fusion.py) has
`teacher_modality` "visual+audio" (the dataset's modality order, whatever order was written),
`teacher_backbone` one backbone per modality joined with "+" ("small-cnn+small-cnn") and
`teacher_fusion` its fusion; a one-modality teacher has no `teacher_fusion`, and its run id is
what it was before multimodal teachers existed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..artefacts.files import file_sha256, slug
from ..artefacts.provenance import code_digest
from ..data.spec import DatasetSpec, Recipe
from ..errors import UserError
from ..models.fusion import DEFAULT_FUSION, SEPARATOR, all_modalities, get_fusion, is_fusion, parse_modality_set
from ..registry import Entry

CONFIG_VERSION = 1
RECIPE_KEYS = tuple(Recipe.__dataclass_fields__)


@dataclass(frozen=True)
class RunConfig:
    method: str
    dataset: str
    task: str
    student_modality: str
    teacher_modality: str
    student_backbone: str
    teacher_backbone: str
    seed: int
    recipe: dict[str, Any]
    hparams: dict[str, Any]
    data_options: dict[str, Any]
    teacher_checkpoint_sha256: str | None = None
    hparams_changed: dict[str, Any] = field(default_factory=dict)
    student_init_sha256: str | None = None  # --student-init / --teacher-init: the weights file's content hash
    teacher_init_sha256: str | None = None
    teacher_epochs: int | None = None  # --teacher-epochs: the teacher's recipe is `recipe` with these epochs
    # a method registered with replace=True (a plug-in in a built-in's place): its code's digest, so
    # its runs never share a run id with the method it replaced
    replacement_code: str | None = None
    # CPU threads when not execution.DEFAULT_THREADS (None): they change CPU results, so they are
    # part of the run id; a run started by `run` or by a suite computes with the same count
    threads: int | None = None
    # a multimodal teacher's fusion (models/fusion.py FUSIONS); None for a one-modality teacher
    teacher_fusion: str | None = None

    @property
    def multimodal_teacher(self) -> bool:
        return self.teacher_fusion is not None

    @property
    def teacher_recipe(self) -> dict[str, Any]:
        """The recipe the teacher is trained with: the student's, with --teacher-epochs if given."""
        return self.recipe if self.teacher_epochs is None else {**self.recipe, "epochs": self.teacher_epochs}

    def identity(self) -> dict[str, Any]:
        identity = asdict(self)
        identity.pop("hparams_changed")
        for key in ("student_init_sha256", "teacher_init_sha256", "teacher_epochs", "replacement_code",
                    "threads", "teacher_fusion"):  # absent when unset: run ids stay as they were
            if identity[key] is None:
                identity.pop(key)
        identity["version"] = CONFIG_VERSION
        return identity

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        # a multimodal teacher's '+' becomes '_' in the slug: visual+audio2visual -> visual_audio2visual
        direction = f"{self.teacher_modality}2{self.student_modality}"
        return slug(f"{self.method}-{self.dataset}-{direction}-s{self.seed}") + f"-{digest}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def init_sha256(path: Path | None) -> str | None:
    """The content hash of --student-init / --teacher-init: a weights file's, or a model folder's (every file)."""
    if path is None:
        return None
    if path.is_dir():
        from ..data.text import directory_fingerprint
        return directory_fingerprint(path)
    return file_sha256(path)


def parse_sets(items: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE; write for example --set T=2")
        pairs.append((key.strip(), value.strip()))
    return pairs


def coerce(key: str, raw: str, default: Any, annotation: Any) -> Any:
    """Turn a `--set` string into the type of the parameter's default."""
    value = yaml.safe_load(raw) if raw != "" else ""
    target = type(default) if default is not None else None
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if target is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if target is str:
            if isinstance(value, (list, dict)):
                raise ValueError
            return raw
        if target in (tuple, list):
            items = value if isinstance(value, list) else [value]
            return tuple(items)
    except (TypeError, ValueError, OverflowError):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(target, str(target))
        raise UserError(f"--set {key}={raw}: {key} expects {kind}") from None
    return value


SEED_LIMIT = 2 ** 32  # seeds are 0 .. 2^32 - 1: the engine derives per-epoch seeds from them in 64 bits


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"seed {seed!r} is out of range; pass an integer from 0 to {SEED_LIMIT - 1}")


# A setting's square stays finite in float32, where the losses are computed: the methods square
# temperatures and weights (kd's T ** 2) and the tensors they scale are float32 (3.4e38).
LARGEST_SETTING = 1.8e19


def check_finite(scope: str, values: dict[str, Any], bounded: bool = True) -> None:
    """Refuse, before anything trains or is written, a NaN or infinite setting (it would only fail once
    the run diverges) and, where `bounded` (method and dataset settings, which methods square and
    generators take), one whose square overflows float32 (kd's T ** 2 with T=1e308 raised
    OverflowError mid-run, after the run's folder existed). A recipe's huge learning rate is left to
    the divergence check, which names the term that went non-finite."""
    for key, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        numbers = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise UserError(f"{scope} setting {key}={value!r} is not a finite number; pass a finite value")
        if bounded and any(abs(v) > LARGEST_SETTING for v in numbers):
            raise UserError(f"{scope} setting {key}={value!r} is too large for the arithmetic a run does "
                            f"(its square overflows float32); pass a value of at most {LARGEST_SETTING:g}")


def split_sets(pairs: list[tuple[str, str]], method: Entry, dataset: Entry) -> tuple[dict, dict, dict]:
    """Route each KEY=VALUE to the method, the dataset or the recipe (prefix `method.`, `data.`, `recipe.` to choose)."""
    scopes = {"method": method.hparams, "data": dataset.hparams, "recipe": {k: getattr(Recipe(), k) for k in RECIPE_KEYS}}
    types = {"method": method.hparam_types, "data": dataset.hparam_types, "recipe": {}}
    chosen: dict[str, dict[str, Any]] = {"method": {}, "data": {}, "recipe": {}}
    for key, raw in pairs:
        scope, dot, name = key.partition(".")
        if dot and scope in scopes:
            candidates = [scope] if name in scopes[scope] else []
        else:
            name = key
            candidates = [s for s in scopes if name in scopes[s]]
        if not candidates:
            known = sorted(set(method.hparams) | set(dataset.hparams) | set(RECIPE_KEYS))
            pool = sorted(scopes[scope]) if dot and scope in scopes else known  # method.w_lo: the method's keys
            close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise UserError(f"--set {key}: no such setting for method {method.name!r} or dataset {dataset.name!r}; "
                            f"{hint}settings are {', '.join(known)}")
        if len(candidates) > 1:
            raise UserError(f"--set {key} is ambiguous ({' and '.join(candidates)} both have it); "
                            f"write {candidates[0]}.{name}=... or {candidates[1]}.{name}=...")
        scope = candidates[0]
        chosen[scope][name] = coerce(name, raw, scopes[scope][name], types[scope].get(name))
    return chosen["method"], chosen["data"], chosen["recipe"]


def resolve(
    *,
    method: Entry,
    dataset: Entry,
    spec: DatasetSpec,
    method_sets: dict[str, Any],
    recipe_sets: dict[str, Any],
    student_modality: str | None,
    teacher_modality: str | None,
    student_backbone: str | None,
    teacher_backbone: str | None,
    seed: int,
    teacher_checkpoint: Path | None,
    student_init: Path | None = None,
    teacher_init: Path | None = None,
    teacher_epochs: int | None = None,
    threads: int | None = None,
    teacher_fusion: str | None = None,
) -> RunConfig:
    if not method.supports(spec.task):
        raise UserError(f"method {method.name!r} does not support {spec.task} (dataset {spec.name!r}); "
                        f"it supports {', '.join(method.tasks)}")
    s_mod = student_modality or spec.student_modality
    spec.modality(s_mod)
    if is_fusion(teacher_modality):
        t_mod, t_backbone, fusion = resolve_multimodal_teacher(method, spec, str(teacher_modality), teacher_backbone,
                                                               teacher_fusion, teacher_init)
    else:
        if teacher_fusion is not None:
            raise UserError(f"--teacher-fusion {teacher_fusion} fuses the modalities of a multimodal teacher; pass "
                            f"--teacher-modality with two or more modalities (e.g. {all_modalities(spec)}) "
                            "or drop --teacher-fusion")
        t_mod = teacher_modality or spec.teacher_modality
        spec.modality(t_mod)
        if refusal := getattr(method.implementation, "multimodal_teacher_only", None):
            raise UserError(f"method {method.name!r} cannot distil from the one-modality teacher {t_mod!r}: {refusal}; "
                            f"give it a multimodal --teacher-modality (e.g. {all_modalities(spec)})")
        if s_mod == t_mod:
            raise UserError(f"student and teacher modality are both {s_mod!r}; cross-modal distillation needs two different modalities")
        t_backbone, fusion = teacher_backbone or spec.modalities[t_mod].backbone, None
    check_seed(seed)
    for scope, values in (("recipe", recipe_sets), ("method", method_sets)):
        check_finite(scope, values, bounded=scope != "recipe")
    recipe = spec.recipe.updated(**recipe_sets)
    if teacher_epochs is not None:
        recipe.updated(epochs=teacher_epochs)  # the teacher's recipe must be valid too (warm-up < epochs)
    hparams = {**method.hparams, **method_sets}
    changed = {k: v for k, v in hparams.items() if v != method.hparams.get(k)}
    # a hyper-parameter added later, at the value earlier records computed: out of the run id (Method.added_hparams)
    added = dict(getattr(method.implementation, "added_hparams", {}) or {})
    hparams = {k: v for k, v in hparams.items() if not (k in added and v == added[k])}
    return RunConfig(
        method=method.name,
        dataset=spec.name,
        task=spec.task,
        student_modality=s_mod,
        teacher_modality=t_mod,
        student_backbone=student_backbone or spec.modalities[s_mod].backbone,
        teacher_backbone=t_backbone,
        seed=seed,
        recipe=recipe.as_dict(),
        hparams=hparams,
        data_options=dict(spec.options),
        teacher_checkpoint_sha256=file_sha256(teacher_checkpoint) if teacher_checkpoint else None,
        hparams_changed=changed,
        student_init_sha256=init_sha256(student_init),
        teacher_init_sha256=init_sha256(teacher_init),
        teacher_epochs=teacher_epochs,
        replacement_code=code_digest(method.implementation)["digest"] if method.meta.get("replace") else None,
        threads=threads,
        teacher_fusion=fusion,
    )


def resolve_multimodal_teacher(method: Entry, spec: DatasetSpec, teacher_modality: str, teacher_backbone: str | None,
                               teacher_fusion: str | None, teacher_init: Path | None) -> tuple[str, str, str]:
    """A multimodal teacher's (modalities, backbones, fusion), canonical: the modalities in the
    dataset's order, one backbone each (`--teacher a+b` pairs them with the modalities as written;
    one name serves every modality). Refused in one line: an impossible set, a backbone count that
    is not the modality count, an unknown fusion, --teacher-init, and a method that needs a
    one-modality teacher (`Method.unimodal_teacher_only`)."""
    written, ordered = parse_modality_set(spec, teacher_modality)
    canonical = SEPARATOR.join(ordered)
    refusal = getattr(method.implementation, "unimodal_teacher_only", None)
    if refusal:
        raise UserError(f"method {method.name!r} cannot distil from a multimodal teacher ({canonical}): {refusal}; "
                        f"give it a one-modality --teacher-modality (one of {', '.join(spec.modalities)})")
    names = [name.strip() for name in teacher_backbone.split(SEPARATOR)] if teacher_backbone else []
    if names and len(names) not in (1, len(written)):
        raise UserError(f"--teacher {teacher_backbone!r} names {len(names)} backbones for the {len(written)} modalities "
                        f"of teacher {teacher_modality!r}; give one backbone for all, or one per modality joined with "
                        f"'+' in the order of --teacher-modality")
    if any(not name for name in names):
        raise UserError(f"--teacher {teacher_backbone!r} has an empty backbone name")
    chosen = dict(zip(written, names if len(names) == len(written) else names * len(written)))
    backbones = [chosen.get(m) or spec.modalities[m].backbone for m in ordered]
    fusion = get_fusion(teacher_fusion or DEFAULT_FUSION).name
    if teacher_init is not None:
        raise UserError(f"--teacher-init loads one backbone's weights; the multimodal teacher {canonical} has "
                        f"{len(ordered)} and is trained from scratch (drop --teacher-init, or pass a trained "
                        f"multimodal teacher's state_dict with --teacher-checkpoint)")
    return canonical, SEPARATOR.join(backbones), fusion
