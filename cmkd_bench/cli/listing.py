"""`cmkd-bench list`: the registered methods, datasets and backbones with their hyper-parameters."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ..catalog import BACKBONES, DATASETS, METHODS, load_all
from ..registry import Registry
from ..tuning import declared_space
from .options import plugin_option


def _format_value(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _registry_table(registry: Registry, title: str) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in ("name", "aliases", "tasks", "description", "hyper-parameters (defaults)"):
        table.add_column(column, overflow="fold")
    for entry in registry:
        described = entry.description + (f"\n[dim]{entry.reference}[/dim]" if entry.reference else "")
        hparams = ", ".join(f"{k}={_format_value(v)}" for k, v in entry.hparams.items())
        space = declared_space(entry) if registry is METHODS else {}
        if space:
            hparams += "\n[dim]tuned over " + "; ".join(
                f"{k}={','.join(map(_format_value, values))}" for k, values in space.items()) + "[/dim]"
        table.add_row(entry.name, ", ".join(entry.aliases), ", ".join(entry.tasks), described, hparams)
    return table


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(["methods", "datasets", "backbones"]))
@plugin_option
def list_command(kind: str | None, plugins: tuple[str, ...]) -> None:
    """List registered methods, datasets and backbones with their hyper-parameters."""
    load_all(plugins)
    console = Console()
    registries = {"methods": METHODS, "datasets": DATASETS, "backbones": BACKBONES}
    for name, registry in registries.items():
        if kind in (None, name):
            console.print(_registry_table(registry, name))
            if name == "backbones":
                console.print("[dim]Also any timm model by name (e.g. resnet18, convnext_atto), pretrained=False, "
                              "in_chans from the modality. Segmentation: any segmentation-models-pytorch model as "
                              "ARCH:ENCODER (e.g. deeplabv3plus:resnet18, unet:tu-convnext_atto), encoder_weights=None, "
                              "in_channels from the modality.[/dim]")
