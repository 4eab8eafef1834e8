"""`cmkd-bench list`: the registered methods, datasets and backbones, one line each; `list KIND NAME`
for one entry in full (hyper-parameters, reference, search space; a dataset's modalities, default
direction, backbones and recipe, and where the recipe comes from).

Plain lines, wrapped at word boundaries to the terminal's width (COLUMNS), never mid-word.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import click

from ..catalog import BACKBONES, DATASETS, METHODS, load_all
from ..data.spec import DatasetSpec
from ..experiments.plan import counted
from ..experiments.search import declared_space
from ..models.fusion import FUSIONS
from ..registry import Entry, Registry
from ..training.runner import reads_data_root
from .options import plugin_option

REGISTRIES: dict[str, Registry] = {"methods": METHODS, "datasets": DATASETS, "backbones": BACKBONES}
TASKS = {"classification": "cls", "segmentation": "seg"}
OPEN_BACKBONES = ("Also any timm model by name (e.g. resnet18, convnext_atto), pretrained=False, in_chans from the "
                  "modality; for segmentation any segmentation-models-pytorch model as ARCH:ENCODER (e.g. "
                  "deeplabv3plus:resnet18, unet:tu-convnext_atto), encoder_weights=None, in_channels from the modality; "
                  "for text any Hugging Face transformers encoder as hf:TYPE (e.g. hf:bert) or hf:FOLDER (its "
                  "config.json), randomly initialised (weights: --student-init FOLDER), with the text extra.")


def _width() -> int:
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def _value(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _wrapped(label: str, text: str, width: int, indent: int = 2) -> list[str]:
    """`label: text`, wrapped at word boundaries with the continuation lines indented under the text."""
    first = " " * indent + (f"{label}: " if label else "")
    return textwrap.wrap(text, width=width, initial_indent=first, subsequent_indent=" " * (indent + 4),
                         break_long_words=False, break_on_hyphens=False) or [first.rstrip()]


def _shortened(text: str, room: int) -> str:
    """The first `room` characters of `text`, cut at a word boundary and marked with '…'."""
    if len(text) <= room:
        return text
    cut = text[:max(1, room - 1)].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return cut + "…"


def compact_lines(kind: str, registry: Registry, width: int) -> list[str]:
    """One line per entry: name (aliases), tasks, the description shortened to fit `width`."""
    entries = list(registry)
    names = [entry.name + (f" ({', '.join(entry.aliases)})" if entry.aliases else "") for entry in entries]
    tasks = ["+".join(TASKS.get(task, task) for task in entry.tasks) for entry in entries]
    name_width = min(max(map(len, names), default=4), max(16, width // 3))
    task_width = max(map(len, tasks), default=3)
    lines = _wrapped("", f"{kind} ({len(entries)}; cls classification, seg segmentation) · in full: "
                         f"cmkd-bench list {kind} NAME", width, indent=0)
    for entry, name, task in zip(entries, names, tasks):
        head = f"  {name:<{name_width}}  {task:<{task_width}}  "
        if len(name) > name_width:  # a long name with aliases: its own line, the rest below
            lines.append(f"  {name}")
            head = f"  {'':<{name_width}}  {task:<{task_width}}  "
        lines.append(head + _shortened(entry.description, max(10, width - len(head))))
    return lines


def method_detail(entry: Entry, width: int) -> list[str]:
    lines = [entry.name + (f"  (aliases: {', '.join(entry.aliases)})" if entry.aliases else "")]
    lines += _wrapped("tasks", ", ".join(entry.tasks), width)
    if entry.meta.get("preset_of"):
        lines += _wrapped("preset of", str(entry.meta["preset_of"]), width)
    lines += _wrapped("description", entry.description, width)
    if entry.reference:
        lines += _wrapped("reference", entry.reference, width)
    for attribute, label in (("unimodal_teacher_only", "needs a one-modality teacher"),
                             ("multimodal_teacher_only", "needs a multimodal teacher (--teacher-modality a+b)")):
        if why := getattr(entry.implementation, attribute, None):
            lines += _wrapped("teacher", f"{label}: {why}", width)
    lines += _hparam_lines("hyper-parameters (defaults; --set KEY=VALUE)", entry, width)
    space = declared_space(entry)
    if space:
        lines.append("  search space (cmkd-bench tune):")
        for key, values in space.items():
            lines += _wrapped("", f"{key}={','.join(map(_value, values))}", width, indent=4)
    else:
        lines += _wrapped("search space", "none declared (cmkd-bench tune skips it)", width)
    return lines


def _hparam_lines(title: str, entry: Entry, width: int) -> list[str]:
    if not entry.hparams:
        return _wrapped(title.split(" (")[0], "none", width)
    lines = [f"  {title}:"]
    for key, value in entry.hparams.items():
        lines += _wrapped("", f"{key}={_value(value)}", width, indent=4)
    return lines


def dataset_detail(entry: Entry, width: int, data_root: str | None) -> list[str]:
    lines = [entry.name + (f"  (aliases: {', '.join(entry.aliases)})" if entry.aliases else "")]
    lines += _wrapped("tasks", ", ".join(entry.tasks), width)
    lines += _wrapped("description", entry.description, width)
    if entry.reference:
        lines += _wrapped("reference", entry.reference, width)
    reads = reads_data_root(entry.name)
    files = ("--data-root PATH" + (f" (prepare it: cmkd-bench prepare {entry.name} --src RAW --dst DATA_ROOT)"
                                   if entry.meta.get("prepare") else "")) if reads else "none (embedded or generated)"
    lines += _wrapped("files", files, width)
    lines += _hparam_lines("options (defaults; --set KEY=VALUE)", entry, width)
    if reads and data_root is None:
        declared = entry.meta.get("specs_without_data")
        if declared is not None:
            return lines + _protocol_lines(entry, declared(dict(entry.hparams)), width)
        lines += _wrapped("modalities, direction, backbones, recipe",
                          f"read from the files: cmkd-bench list datasets {entry.name} --data-root PATH", width)
        return lines
    # at its defaults, as a run builds it (the generated sets take a second at most)
    spec = DATASETS.build(entry.name, Path(data_root) if data_root else None).spec
    return lines + _modality_lines(spec, width) + _recipe_lines(spec, width) + _cost_lines(spec, width)


def _protocol_lines(entry: Entry, specs: dict, width: int) -> list[str]:
    """Each protocol as the dataset declares it (no file read): source, modalities, cost; then what they share."""
    lines = _wrapped("protocols", "as declared, nothing read (--set protocol=NAME; the prepared files' own "
                                  f"numbers: cmkd-bench list datasets {entry.name} --data-root PATH)", width)
    for name, (source, spec) in specs.items():
        lines.append(f"  {name}" + (" (default)" if name == entry.hparams.get("protocol") else "") + ":")
        lines += _wrapped("reproduces", source, width, indent=4)
        lines += _modality_lines(spec, width, indent=4)
        lines += _cost_lines(spec, width, indent=4)
    recipes = {str(spec.recipe.as_dict()) + spec.recipe_source for _, spec in specs.values()}
    first = next(iter(specs.values()))[1]
    shared = _recipe_lines(first, width) if len(recipes) == 1 else []
    return lines + _wrapped("default direction", _direction(first), width) + _wrapped("classes", str(first.num_classes),
                                                                                    width) + shared


def _modality_lines(spec: DatasetSpec, width: int, indent: int = 2) -> list[str]:
    lines = [" " * indent + "modalities (default backbone):"]
    for name, modality in spec.modalities.items():
        shape = "x".join(map(str, modality.shape))
        lines += _wrapped(name, f"{shape}, {modality.backbone}" + (f"; {modality.description}"
                                                                     if modality.description else ""), width,
                          indent=indent + 2)
    if indent > 2:
        return lines
    return (lines + _wrapped("default direction", _direction(spec), width)
            + _wrapped("classes", str(spec.num_classes), width))


def _direction(spec: DatasetSpec) -> str:
    return (f"{spec.teacher_modality} (teacher) → {spec.student_modality} (student); "
            "--teacher-modality / --student-modality change it")


def _recipe_lines(spec: DatasetSpec, width: int) -> list[str]:
    recipe = ", ".join(f"{key}={_value(value)}" for key, value in spec.recipe.as_dict().items())
    lines = _wrapped("recipe", recipe, width)
    if spec.recipe_source:
        lines += _wrapped("recipe from", spec.recipe_source, width)
    return lines


def _cost_lines(spec: DatasetSpec, width: int, indent: int = 2) -> list[str]:
    """What a run costs, from the spec alone: each default backbone's parameters on its input, and the
    training steps per epoch from the train split's size."""
    models = []
    for role, name in (("teacher", spec.teacher_modality), ("student", spec.student_modality)):
        modality = spec.modalities[name]
        models.append(f"{role} {modality.backbone} on {'x'.join(map(str, modality.shape))}: "
                      f"{_parameters(modality.backbone, spec, name)} parameters")
    lines = _wrapped("cost", "; ".join(models), width, indent=indent)
    steps = _steps_text(spec)
    return lines + (_wrapped("steps", steps, width, indent=indent) if steps else [])


def _parameters(backbone: str, spec: DatasetSpec, modality: str) -> str:
    import torch

    from ..models.backbones import build_backbone  # as a run builds it, on the modality's shape and classes

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation (a resnet18 in 0.1 s, not 0.8)
            model = build_backbone(backbone, spec, modality)
    except (RuntimeError, NotImplementedError):  # a backbone that computes on real tensors while it is built
        model = build_backbone(backbone, spec, modality)
    count = sum(p.numel() for p in model.parameters())
    return f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count:,}"


def _steps_text(spec: DatasetSpec) -> str:
    """Steps per epoch (a run drops the train split's last partial batch) and in the recipe's epochs."""
    train, batch, epochs = spec.split_sizes.get("train"), spec.recipe.batch_size, spec.recipe.epochs
    if not train:
        return ""
    held = spec.options.get("val_fraction")
    kept = train - round(train * held) if held else train
    per_epoch = max(1, kept // batch)
    about = "about " if held or spec.options.get("protocol") else ""
    source = (f"the published split's {train:,} train clips" + (f" less {held:.0%} held out for val" if held else "")
              if about else f"{train:,} train samples")
    return (f"{about}{per_epoch:,} per epoch ({source}; batch {batch}), {about}{per_epoch * epochs:,} in "
            f"{counted(epochs, 'epoch')}")


def backbone_detail(entry: Entry, width: int) -> list[str]:
    lines = [entry.name + (f"  (aliases: {', '.join(entry.aliases)})" if entry.aliases else "")]
    lines += _wrapped("tasks", ", ".join(entry.tasks), width)
    lines += _wrapped("description", entry.description, width)
    return lines + _hparam_lines("options (defaults)", entry, width)


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(list(REGISTRIES)))
@click.argument("name", required=False)
@click.option("--data-root", type=click.Path(), help="With `list datasets NAME`: read a dataset's modalities and "
                                                      "recipe from these files.")
@plugin_option
def list_command(kind: str | None, name: str | None, data_root: str | None, plugins: tuple[str, ...]) -> None:
    """List methods, datasets and backbones, one line each; KIND NAME shows one in full."""
    load_all(plugins)
    width = _width()
    if name is not None:
        if kind is None:  # click fills KIND first, so this cannot happen; kept for clarity
            raise click.UsageError("give the kind before the name, e.g. `cmkd-bench list methods kd`")
        entry = REGISTRIES[kind].get(name)  # an unknown name: one line with suggestions
        if kind == "methods":
            lines = method_detail(entry, width)
        elif kind == "datasets":
            lines = dataset_detail(entry, width, data_root)
        else:
            lines = backbone_detail(entry, width)
        click.echo("\n".join(lines))
        return
    blocks = []
    for registry_kind, registry in REGISTRIES.items():
        if kind in (None, registry_kind):
            lines = compact_lines(registry_kind, registry, width)
            if registry_kind == "backbones":
                lines += _wrapped("", OPEN_BACKBONES, width)
                lines += ["", f"teacher fusions ({len(FUSIONS)}; --teacher-fusion, with --teacher-modality a+b)"]
                for fusion_name, fusion in sorted(FUSIONS.items()):
                    lines.append(_shortened(f"  {fusion_name:<12}{fusion.description}", width))
            blocks.append("\n".join(lines))
    click.echo("\n\n".join(blocks))
