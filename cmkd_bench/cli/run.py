"""`cmkd-bench run`: one run, shown as it trains; and a request back as `run`'s arguments.

Every option of `run` fills the RunRequest field of its name, except the RUN_ONLY_OPTIONS (how the
run is shown, which plug-ins load). `run_arguments` walks the same options the other way, so a
suite's subprocess gets every field of its request, including fields added later.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..catalog import load_all
from ..engine import EpochReport
from ..runner import RunCallbacks, RunRequest, execute, resolve_run
from .options import plugin_option

# `run` options that are no field of RunRequest: they change what is printed and what is registered,
# never the run itself (its run id, its record).
RUN_ONLY_OPTIONS = ("quiet", "plugins")


class RichProgress:
    """Per-epoch progress bars, one printed line per epoch with the mean of each loss term."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.label = ""

    def phase(self, label: str, epochs: int, steps: int) -> None:
        self.label, self.steps = label, steps
        self.console.print(f"[bold]{label}[/bold]: {epochs} epochs x {steps} steps")

    def step(self, step: int, steps: int) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=steps)
        self.bar.update(self.task, completed=step)

    def epoch(self, report: EpochReport) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.quiet:
            return
        losses = "  ".join(f"{k} {v:.4f}" for k, v in report.losses.items())
        self.console.print(f"  epoch {report.epoch:>3}/{report.epochs}  {losses}  val {report.val:.2f} "
                           f"(best {report.best_val:.2f})  lr {report.lr:.3g}")

    def message(self, text: str) -> None:
        self.console.print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def summary_line(record: dict[str, Any]) -> str:
    m, t = record["metrics"], record["teacher"]
    metric = record["metric"]
    direction = f"{record['teacher_modality']}→{record['student_modality']}"
    speed = f" · {record['steps_per_s']:.1f} steps/s" if record.get("steps_per_s") else ""
    return (f"{record['method']} on {record['dataset']} {direction} seed {record['seed']}: test {metric} "
            f"{m['test']:.2f} (best val {m['val_best']:.2f} at epoch {m['best_epoch']}; last epoch {m['test_last']:.2f}) "
            f"· teacher {t['metrics']['test']:.2f}{speed} · {record['run_id']}")


@click.command("run")
@click.option("--method", required=True, help="Distillation method (see `cmkd-bench list methods`).")
@click.option("--dataset", required=True, help="Dataset (see `cmkd-bench list datasets`).")
@click.option("--student-modality", help="Default: the dataset's.")
@click.option("--teacher-modality", help="Default: the dataset's.")
@click.option("--student", "student_backbone", help="Student backbone. Default: the dataset's for the modality.")
@click.option("--teacher", "teacher_backbone", help="Teacher backbone. Default: the dataset's for the modality.")
@click.option("--epochs", type=int, help="Default: the dataset's recipe.")
@click.option("--batch-size", type=int, help="Default: the dataset's recipe.")
@click.option("--lr", type=float, help="Default: the dataset's recipe.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-root", type=click.Path(), help="Where a real or bring-your-own dataset lives.")
@click.option("--out", default="runs", show_default=True, type=click.Path(), help="Runs go to OUT/<run_id>/.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Method, dataset or recipe setting (repeatable); prefix method./data./recipe. when ambiguous.")
@click.option("--teacher-checkpoint", type=click.Path(), help="Use this teacher state_dict instead of training one.")
@click.option("--teacher-cache", type=click.Path(), help="Where trained teachers are cached. Default: OUT/teachers.")
@click.option("--force", is_flag=True, help="Rerun even if a completed record exists.")
@click.option("--quiet", is_flag=True, help="No per-epoch output.")
@plugin_option
def run_command(plugins: tuple[str, ...], quiet: bool, **request_options: Any) -> None:
    """Train (or reuse) the teacher, train the student with METHOD, and write the run record."""
    load_all(plugins)
    request = RunRequest(**request_options)
    resolved = resolve_run(request)
    console = Console(stderr=False, highlight=False)
    display = RichProgress(console, quiet)
    callbacks = RunCallbacks(on_phase=display.phase, on_step=display.step, on_epoch=display.epoch,
                             on_message=display.message)
    try:
        record = execute(resolved, callbacks, force=request.force)
    finally:
        display.close()
    if record.get("skipped"):
        console.print(f"already completed (use --force to rerun): {resolved.run_dir / 'result.json'}")
    console.print(summary_line(record), soft_wrap=True)


def run_arguments(request: RunRequest, quiet: bool = False, plugins: Sequence[str] = ()) -> list[str]:
    """`run`'s arguments for `request`: each of `run`'s options with the request's field of its name
    (and --quiet, --plugin); `run` parses them back into the same request, so the same run id.

    An option of `run` that is neither a RunRequest field nor in RUN_ONLY_OPTIONS is an error here,
    so no option can be dropped from a suite's runs without notice.
    """
    values = {field.name: getattr(request, field.name) for field in fields(request)}
    values.update(quiet=quiet, plugins=tuple(plugins))
    arguments: list[str] = []
    for param in run_command.params:
        if param.name not in values:
            raise RuntimeError(f"`run` option {param.name!r} is no RunRequest field; add the field to RunRequest "
                               f"or the name to RUN_ONLY_OPTIONS (cmkd_bench/cli/run.py)")
        arguments += _as_arguments(param, values[param.name])
    return arguments


def _as_arguments(param: click.Parameter, value: Any) -> list[str]:
    """One parameter's value as command-line arguments: none for None or an unset flag, one
    occurrence per item of a repeatable option."""
    if value is None:
        return []
    if isinstance(param, click.Argument):
        return [str(part) for part in (value if param.nargs != 1 else [value])]
    assert isinstance(param, click.Option), param
    name = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
    arguments: list[str] = []
    for occurrence in (value if param.multiple else [value]):
        if param.is_flag and param.secondary_opts:
            arguments.append(name if occurrence else param.secondary_opts[0])
        elif param.is_flag:
            arguments += [name] if occurrence else []
        else:
            arguments += [name, *(str(part) for part in (occurrence if param.nargs != 1 else [occurrence]))]
    return arguments
