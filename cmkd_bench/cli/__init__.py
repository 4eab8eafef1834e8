"""The `cmkd-bench` command line: the `cli` group and `main`; each command group in its own module.

    listing.py      list                      options.py   options several commands take (--plugin)
    run.py          run                       suite.py     suite, tune
    leaderboard.py  leaderboard               prepare.py   prepare, verify
    plots.py        plot bars|heatmap|sweep   analyze.py   analyze freq-similarity|tsne

This package is the only place that knows click: the modules it wraps take and return plain values.
Errors a user can cause end in one line on stderr and exit code 2; a run that fails (for example
a non-finite loss) exits 1 after writing its failed record.
"""

from __future__ import annotations

import signal
import sys
import threading

import click

from .. import __version__
from ..catalog import load_all
from ..distributed import world
from ..errors import RunFailed, UserError
from .analyze import analyze_group
from .leaderboard import leaderboard_command
from .listing import list_command
from .options import PLUGIN_HELP
from .plots import plot_group
from .prepare import prepare_command, verify_command
from .run import run_command
from .suite import suite_command, tune_command

__all__ = ["cli", "main"]

INTERRUPTED = "interrupted; run the same command again to resume from the last finished epoch"
TERMINATED = "terminated (SIGTERM); run the same command again to resume from the last finished epoch"


class Terminated(Exception):
    """SIGTERM (a scheduler's kill, `kill PID`) as an exception, so the run unwinds as for Ctrl-C: locks
    released, nothing half-written (files are renamed into place), and one line saying how to resume."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cmkd-bench")
@click.option("--plugin", "plugins", multiple=True, metavar="PATH.py", help=PLUGIN_HELP + " Before the command: "
              "for any command (`cmkd-bench --plugin my_method.py list methods`).")
def cli(plugins: tuple[str, ...]) -> None:
    """Cross-modal knowledge distillation benchmark: every baseline under one fair protocol."""
    if plugins:  # for every command, also those without a --plugin of their own (leaderboard, prepare)
        load_all(plugins)


for _command in (list_command, run_command, leaderboard_command, suite_command, tune_command, prepare_command,
                 plot_group, analyze_group, verify_command):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    # only where nothing else handles SIGTERM (submitit installs its own in a cluster job's process)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        cli.main(args=argv, prog_name="cmkd-bench", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `cmkd-bench`: the help, as with git
            click.echo(exc.format_message())
            sys.exit(0)
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except UserError as exc:
        if world().rank == 0:  # under torchrun, one line from rank 0 (every rank exits 2)
            click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except RunFailed as exc:
        if world().rank == 0:
            click.echo(f"run failed: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except Terminated:
        if world().rank == 0:
            click.echo(TERMINATED, err=True)
        sys.exit(143)  # 128 + SIGTERM, what the shell reports for a process SIGTERM ended
    sys.exit(0)
