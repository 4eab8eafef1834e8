"""Options that several commands take, declared once."""

from __future__ import annotations

from typing import Callable

import click

PLUGIN_HELP = ("Load a Python file that registers methods, datasets or backbones (repeatable; "
               "CMKD_BENCH_PLUGINS=FILE.py[:FILE2.py] loads files for every command).")


def _with_group_plugins(context: click.Context, parameter: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """A command's --plugin files after those given before the command (`cmkd-bench --plugin F COMMAND`),
    so a command that passes its plug-ins on (a suite to its runs) passes both."""
    root = context.find_root()
    given = root.params.get("plugins", ()) if root is not context else ()
    return (*given, *value)


plugin_option = click.option("--plugin", "plugins", multiple=True, metavar="PATH.py", help=PLUGIN_HELP,
                             callback=_with_group_plugins)


# The settings `suite` and `tune` give every run they plan (each is `run`'s option of the same name).
_PER_RUN = (
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="A setting for every run (repeatable), as in `run`."),
    click.option("--epochs", type=int, help="Recipe epochs for every run."),
    click.option("--teacher-epochs", "teacher_epochs", type=int,
                 help="Teacher epochs for every run (run --teacher-epochs). Default: the recipe's."),
    click.option("--batch-size", "batch_size", type=int, help="Recipe batch size for every run."),
    click.option("--lr", type=float, help="Recipe learning rate for every run."),
    click.option("--student", help="Student backbone for every run."),
    click.option("--teacher", help="Teacher backbone for every run (a multimodal teacher: one for all its modalities, "
                                   "or one per modality joined with '+', as run --teacher)."),
    click.option("--teacher-fusion", "teacher_fusion",
                 help="The fusion of a suite's multimodal teacher (teachers: [.., multimodal]), as run "
                      "--teacher-fusion. Default: the file's, else concat."),
    click.option("--teacher-cache", "teacher_cache", type=click.Path(),
                 help="Where teachers are cached. Default: OUT/teachers."),
    click.option("--data-root", "data_root", type=click.Path(), help="Where real or bring-your-own datasets live."),
    click.option("--threads-per-run", "threads_per_run", type=int,
                 help="CPU threads (and at most as many DataLoader workers) of each run, as run --threads. Default: "
                      "1, as for run (on SLURM, --cpus-per-run); part of the run id when not 1, since threads change "
                      "CPU results."),
)


def per_run_options(command: Callable) -> Callable:
    for option in reversed(_PER_RUN):
        command = option(command)
    return command
