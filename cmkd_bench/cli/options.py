"""Options that several commands take, declared once."""

from __future__ import annotations

import click

plugin_option = click.option("--plugin", "plugins", multiple=True, metavar="PATH.py",
                             help="Load a Python file that registers methods, datasets or backbones (repeatable).")
