"""`cmkd-bench run`: one run, shown as it trains; and a request back as `run`'s arguments.

Every option of `run` fills the RunRequest field of its name, except the RUN_ONLY_OPTIONS (how the
run is shown, which plug-ins load). `run_arguments` walks the same options the other way, so a
suite's subprocess gets every field of its request, including fields added later.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Sequence

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from .. import distributed
from ..catalog import load_all
from ..experiments.plan import counted
from ..training.engine import EpochReport
from ..training.runner import RunCallbacks, RunRequest, execute, resolve_run
from ..training.tracking import LOGGERS, logger_factory
from ..models.fusion import FUSIONS
from .options import plugin_option

# `run` options that are no field of RunRequest: they change what is printed and what is registered,
# never the run itself (its run id, its record).
# --sync-bn is torchrun's (it changes nothing in one process; the record's `distributed` field keeps it).
RUN_ONLY_OPTIONS = ("quiet", "plugins", "logger", "dry_run", "sync_bn")


class RateColumn(ProgressColumn):
    """Steps per second of the epoch under way."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} steps/s" if task.speed else "- steps/s")


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class RichProgress:
    """Per-epoch progress bars (steps/s, the epoch's ETA) on a terminal, one printed line per epoch
    with the mean of each loss term, steps/s and the phase's ETA. `quiet`: no bars and no epoch lines
    on a terminal; where stdout is a pipe or a file (a suite's run.log) the epoch lines are printed."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.label = ""
        self.seconds: list[float] = []

    def phase(self, label: str, epochs: int, steps: int) -> None:
        self.label, self.steps, self.seconds = label, steps, []
        self.console.print(f"[bold]{label}[/bold]: {counted(epochs, 'epoch')} x {counted(steps, 'step')}")

    def step(self, step: int, steps: int) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=steps)
        self.bar.update(self.task, completed=step)

    def epoch(self, report: EpochReport) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        self.seconds.append(report.seconds)
        if self.quiet and self.console.is_terminal:
            return
        self.console.print(epoch_line(report, self.seconds), soft_wrap=True)

    def message(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)  # one line, whatever the terminal's width: paths stay whole

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def epoch_line(report: EpochReport, seconds: Sequence[float] = ()) -> str:
    """One epoch: each loss term's mean, val (best), lr, steps/s, and the phase's ETA from the mean
    seconds of its epochs so far (training only; evaluation adds a little)."""
    losses = "  ".join(f"{k} {v:.4f}" for k, v in report.losses.items())
    line = (f"  epoch {report.epoch:>3}/{report.epochs}  {losses}  val {report.val:.2f} "
            f"(best {report.best_val:.2f})  lr {report.lr:.3g}")
    if report.seconds > 0:
        line += f"  {report.steps / report.seconds:.1f} steps/s"
    done = [s for s in seconds if s > 0]
    if done and report.epoch < report.epochs:
        line += f"  ETA {duration_text(sum(done) / len(done) * (report.epochs - report.epoch))}"
    return line


def summary_line(record: dict[str, Any]) -> str:
    m, t = record["metrics"], record["teacher"]
    metric = record["metric"]
    direction = f"{record['teacher_modality']}→{record['student_modality']}"
    speed = f" · {record['steps_per_s']:.1f} steps/s" if record.get("steps_per_s") else ""
    fusion = f"{t['fusion']} fusion, " if t.get("fusion") else ""  # a multimodal teacher's
    return (f"{record['method']} on {record['dataset']} {direction} seed {record['seed']}: test {metric} "
            f"{m['test']:.2f} (best val {m['val_best']:.2f} at epoch {m['best_epoch']}; last epoch {m['test_last']:.2f}) "
            f"· teacher {t['metrics']['test']:.2f} ({fusion}{teacher_recipe_text(record)}){speed} · {record['run_id']}")


def teacher_recipe_text(record: dict[str, Any]) -> str:
    """Which recipe the run's teacher was trained with, in a few words: its epochs, and whether they
    are the student's (records from before --teacher-epochs name no teacher recipe: the student's)."""
    teacher, config = record["teacher"], record.get("config") or {}
    if teacher.get("checkpoint") and str(teacher.get("key", "")).startswith("checkpoint-"):
        return "given checkpoint"
    student_epochs = (config.get("recipe") or {}).get("epochs")
    epochs = (teacher.get("recipe") or {}).get("epochs", student_epochs)
    if epochs is None:
        return "student's recipe"
    return counted(epochs, "epoch") + (", the student's recipe" if epochs == student_epochs else
                                       f"; the student's recipe with --teacher-epochs {epochs}")


def dry_run_text(resolved: Any) -> str:
    """What `run --dry-run` prints: the run id, where it would go, what would happen, the resolved configuration."""
    import yaml

    from ..training.runner import existing_record, teacher_folder

    config = resolved.config
    if existing_record(resolved) is not None:
        state = "already completed: would print its record (--force reruns)"
    elif (resolved.run_dir / "checkpoint.pt").exists():
        state = "interrupted: would resume from its checkpoint"
    else:
        state = "new: would train"
    epochs = config.teacher_recipe["epochs"]
    cached = (teacher_folder(resolved) / "teacher.pt").exists()
    teacher = (f"given checkpoint {resolved.teacher_checkpoint}" if resolved.teacher_checkpoint is not None
               else f"{teacher_folder(resolved)} ({counted(epochs, 'epoch')}; "
                    + ("cached)" if cached else "would be trained)"))
    lines = [f"run id: {config.run_id}", f"run folder: {resolved.run_dir} ({state})", f"teacher: {teacher}",
             f"device: {resolved.device}", "configuration:",
             yaml.safe_dump(config.as_dict(), sort_keys=False, default_flow_style=None, width=100).rstrip(),
             "dry run: nothing trained, nothing written"]
    return "\n".join(lines)


@click.command("run")
@click.option("--method", required=True, help="Distillation method (see `cmkd-bench list methods`).")
@click.option("--dataset", required=True, help="Dataset (see `cmkd-bench list datasets`).")
@click.option("--student-modality", help="Default: the dataset's.")
@click.option("--teacher-modality",
              help="Default: the dataset's. Two or more joined with '+' (e.g. visual+audio): a multimodal teacher, "
                   "one encoder per modality fused by --teacher-fusion (docs/commands.md).")
@click.option("--student", "student_backbone", help="Student backbone. Default: the dataset's for the modality.")
@click.option("--teacher", "teacher_backbone",
              help="Teacher backbone. Default: the dataset's for the modality. A multimodal teacher: one for all, or "
                   "one per modality joined with '+' in the order of --teacher-modality.")
@click.option("--teacher-fusion", metavar="NAME",
              help=f"How a multimodal teacher fuses its encoders: {', '.join(sorted(FUSIONS))}. Default: concat "
                   "(pooled features concatenated -> linear head, as MST-Distill's teacher).")
@click.option("--epochs", type=int, help="Default: the dataset's recipe.")
@click.option("--teacher-epochs", type=int,
              help="Epochs of the teacher it trains (its recipe is the student's with these epochs). Default: --epochs.")
@click.option("--batch-size", type=int, help="Default: the dataset's recipe.")
@click.option("--lr", type=float, help="Default: the dataset's recipe.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, help="CPU threads of the run (they change CPU results: a count other than the "
              "default 1 is part of the run id). Default: 1, as in a suite.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-root", type=click.Path(), help="Where a real or bring-your-own dataset lives.")
@click.option("--out", default="runs", show_default=True, type=click.Path(), help="Runs go to OUT/<run_id>/.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Method, dataset or recipe setting (repeatable); prefix method./data./recipe. when ambiguous.")
@click.option("--teacher-checkpoint", type=click.Path(), help="Use this teacher state_dict instead of training one.")
@click.option("--teacher-cache", type=click.Path(), help="Where trained teachers are cached. Default: OUT/teachers.")
@click.option("--student-init", type=click.Path(), metavar="PATH",
              help="Start the student from this weights file (.pt/.pth state_dict or .safetensors): what fits is "
                   "loaded, a 3-channel input stem is adapted, other mismatches (a head) stay fresh.")
@click.option("--teacher-init", type=click.Path(), metavar="PATH",
              help="Start the teacher it trains from this weights file, as --student-init does.")
@click.option("--force", is_flag=True, help="Rerun even if a completed record exists.")
@click.option("--compile", is_flag=True, help="torch.compile the student and the teacher (recorded; not in the run id).")
@click.option("--channels-last", is_flag=True,
              help="Channels-last weights and image inputs (recorded; not in the run id); needs C x H x W inputs.")
@click.option("--rebuild-teacher", is_flag=True,
              help="Discard this run's cached teacher (weights, metrics, partial training, what methods derived from "
                   "it), train it again, and rerun the run (for a teacher cache reported damaged).")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and run id; train and write nothing.")
@click.option("--quiet", is_flag=True,
              help="No progress bars or epoch lines on a terminal (piped or to a file, epoch lines still print).")
@click.option("--logger", type=click.Choice(LOGGERS), default=None,
              help="Also log each epoch to TensorBoard (OUT/<run_id>/tensorboard/) or wandb (offline unless "
                   "WANDB_MODE says otherwise); OUT/<run_id>/history.csv is always written.")
@click.option("--sync-bn", is_flag=True,
              help="Under torchrun: BatchNorm statistics over the whole batch (SyncBatchNorm), not each process's part.")
@plugin_option
def run_command(plugins: tuple[str, ...], quiet: bool, logger: str | None, dry_run: bool, sync_bn: bool,
                **request_options: Any) -> None:
    """Train (or reuse) the teacher, train the student with METHOD, and write the run record.

    Under `torchrun --nproc-per-node N -m cmkd_bench run ...` the run trains on N processes (DDP);
    rank 0 alone prints and writes (cmkd_bench.distributed)."""
    load_all(plugins)
    open_logger = logger_factory(logger or "none")  # a missing package is a one-line error before anything runs
    request = RunRequest(**request_options)
    request = replace(request, device=distributed.start(request.device, sync_bn))  # torchrun: this rank's device
    try:
        _run(request, quiet, open_logger, dry_run)
    finally:
        distributed.stop()


def _run(request: RunRequest, quiet: bool, open_logger: Any, dry_run: bool) -> None:
    resolved = resolve_run(request)
    main = distributed.world().rank == 0
    if dry_run:
        if main:
            click.echo(dry_run_text(resolved))
        return
    console = Console(stderr=False, highlight=False, quiet=not main)
    display = RichProgress(console, quiet)
    callbacks = RunCallbacks(on_phase=display.phase, on_step=display.step, on_epoch=display.epoch,
                             on_message=display.message, logger=open_logger if main else None)
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
    values.update(quiet=quiet, plugins=tuple(plugins), logger=None)
    values.setdefault("dry_run", False)  # a suite's run trains
    values.setdefault("sync_bn", False)  # and runs in one process
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
