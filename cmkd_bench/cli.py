"""The `cmkd-bench` command line: list, run, leaderboard.

Errors a user can cause end in one line on stderr and exit code 2; a run that fails (for example
a non-finite loss) exits 1 after writing its failed record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .catalog import BACKBONES, DATASETS, METHODS, load_all
from .engine import EpochReport
from .errors import RunFailed, UserError
from .registry import Registry

plugin_option = click.option("--plugin", "plugins", multiple=True, metavar="PATH.py",
                             help="Load a Python file that registers methods, datasets or backbones (repeatable).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cmkd-bench")
def cli() -> None:
    """Cross-modal knowledge distillation benchmark: every baseline under one fair protocol."""


# -- list ----------------------------------------------------------------------------------------
def _format_value(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _registry_table(registry: Registry, title: str) -> Table:
    from .tuning import declared_space

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


@cli.command("list")
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


# -- run -----------------------------------------------------------------------------------------
class RichProgress:
    """Per-epoch progress bars, one printed line per epoch with the mean of each loss term."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.task = None
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


def summary_line(record: dict) -> str:
    m, t = record["metrics"], record["teacher"]
    metric = record["metric"]
    direction = f"{record['teacher_modality']}→{record['student_modality']}"
    speed = f" · {record['steps_per_s']:.1f} steps/s" if record.get("steps_per_s") else ""
    return (f"{record['method']} on {record['dataset']} {direction} seed {record['seed']}: test {metric} "
            f"{m['test']:.2f} (best val {m['val_best']:.2f} at epoch {m['best_epoch']}; last epoch {m['test_last']:.2f}) "
            f"· teacher {t['metrics']['test']:.2f}{speed} · {record['run_id']}")


@cli.command()
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
def run(plugins: tuple[str, ...], quiet: bool, **options) -> None:
    """Train (or reuse) the teacher, train the student with METHOD, and write the run record."""
    from .runner import Progress as Callbacks
    from .runner import RunRequest, execute, prepare

    load_all(plugins)
    force = options.pop("force")
    prepared = prepare(RunRequest(**options, force=force))
    console = Console(stderr=False, highlight=False)
    display = RichProgress(console, quiet)
    callbacks = Callbacks(on_phase=display.phase, on_step=display.step, on_epoch=display.epoch, on_message=display.message)
    try:
        record = execute(prepared, callbacks, force=force)
    finally:
        display.close()
    if record.get("skipped"):
        console.print(f"already completed (use --force to rerun): {prepared.run_dir / 'result.json'}")
    console.print(summary_line(record), soft_wrap=True)


# -- leaderboard ---------------------------------------------------------------------------------
@cli.command()
@click.argument("runs_dirs", nargs=-1, type=click.Path())
@click.option("--format", "fmt", default="rich", show_default=True,
              type=click.Choice(["rich", "md", "csv", "latex", "html"]),
              help="html: one self-contained file, sortable by clicking a column header.")
@click.option("--layout", default="long", show_default=True, type=click.Choice(["long", "wide"]),
              help="long: a table per dataset and direction; wide: a column per dataset and direction, "
                   "with the average rank (like the papers' Table 1).")
@click.option("--output", type=click.Path(), help="Write the table to this file instead of the terminal.")
@click.option("--dataset", "datasets", multiple=True, help="Only this dataset (repeatable).")
@click.option("--method", "methods", multiple=True, help="Only this method (repeatable); no-kd always stays.")
@click.option("--where", "wheres", multiple=True, metavar="KEY=VALUE",
              help="Only records whose field, hyper-parameter, dataset option or recipe setting KEY is VALUE "
                   "(repeatable; prefix hparams., data. or recipe. to choose).")
@click.option("--with-published", is_flag=True,
              help="Add the numbers published in papers (leaderboard/published.csv) in labelled columns, with the gap.")
@click.option("--published", "published_file", type=click.Path(),
              help="Published numbers from this CSV instead (implies --with-published).")
@click.option("--view", default="all", show_default=True, type=click.Choice(["all", "default", "tuned"]),
              help="Rows: all; only the default configurations; or each tuned method's selected configuration "
                   "(`cmkd-bench tune`) in place of its default.")
def leaderboard(runs_dirs: tuple[str, ...], fmt: str, layout: str, output: str | None, datasets: tuple[str, ...],
                methods: tuple[str, ...], wheres: tuple[str, ...], with_published: bool,
                published_file: str | None, view: str) -> None:
    """Tables of completed runs: mean ± std over seeds, Δ vs no-KD, teacher row, failed runs listed."""
    from .leaderboard import DEFAULT_PUBLISHED, filter_records, load_published, load_records, print_leaderboard

    paths = [Path(p) for p in runs_dirs] or [Path("runs")]
    records = filter_records(load_records(paths), datasets=datasets, methods=methods, where=wheres)
    published = None
    if with_published or published_file:
        published = load_published(Path(published_file) if published_file else DEFAULT_PUBLISHED)
    print_leaderboard(records, fmt, Path(output) if output else None, paths=paths, layout=layout,
                      published=published, view=view)


# -- tune ----------------------------------------------------------------------------------------
@cli.command()
@click.argument("suite_file", required=False, type=click.Path())
@click.option("--method", "method_names", multiple=True,
              help="Method to tune (repeatable, or 'all': every method with a search space).")
@click.option("--dataset", "dataset_names", multiple=True, help="Dataset (repeatable).")
@click.option("--budget", type=int, help="Configurations per study (default 8, the same for every method).")
@click.option("--space", "spaces", multiple=True, metavar="KEY=V1,V2",
              help="Search this space instead of the method's declared one (repeatable; one --method only).")
@click.option("--sample-seed", type=int, help="Seed of the subset drawn from a space larger than the budget (default 0).")
@click.option("--seeds", help="Protocol seeds, comma-separated; the first selects. Default: the file's, else 0,1,2.")
@click.option("--directions", help="default, both, or TEACHER->STUDENT pairs, comma-separated. Default: both.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A setting for every run (repeatable).")
@click.option("--epochs", type=int, help="Recipe epochs for every run.")
@click.option("--batch-size", "batch_size", type=int, help="Recipe batch size for every run.")
@click.option("--lr", type=float, help="Recipe learning rate for every run.")
@click.option("--student", help="Student backbone for every run.")
@click.option("--teacher", help="Teacher backbone for every run.")
@click.option("--out", help="Runs go to OUT/<run_id>/, study summaries to OUT/tuning/ (default: runs).")
@click.option("--teacher-cache", "teacher_cache", type=click.Path(), help="Where teachers are cached.")
@click.option("--data-root", "data_root", type=click.Path(), help="Where real or bring-your-own datasets live.")
@click.option("--jobs", "-j", type=int, help="Runs at once on this machine. Default: 1 (one per --devices entry).")
@click.option("--device", help="auto, cpu, cuda or cuda:N for every run.")
@click.option("--devices", help="Comma-separated devices; job slots take them in turn.")
@click.option("--dry-run", is_flag=True, help="List the studies and their configurations; run nothing.")
@plugin_option
def tune(suite_file: str | None, method_names: tuple[str, ...], dataset_names: tuple[str, ...], budget: int | None,
         spaces: tuple[str, ...], sample_seed: int | None, jobs: int | None, device: str | None, devices: str | None,
         dry_run: bool, **flags) -> None:
    """Tune METHOD on DATASET under the protocol: every configuration on the first seed, select on val, run all seeds.

    Exit code 0 when no run failed, 1 when one did, 2 for bad input (nothing runs).
    """
    from .suite import _devices, suite_with_flags
    from .tuning import TuneSettings, check_budget, parse_space_flags, plan_studies, plan_text, run_studies

    load_all(flags["plugins"])
    flags.update(methods=",".join(method_names) or None, datasets=",".join(dataset_names) or None, grid=())
    suite = suite_with_flags(suite_file, flags)
    base = suite.tune or TuneSettings()
    single = method_names[0] if len(method_names) == 1 and method_names[0] != "all" else None
    settings = TuneSettings(budget=check_budget(budget) if budget is not None else base.budget,
                            spaces=parse_space_flags(spaces, single) or base.spaces,
                            sample_seed=base.sample_seed if sample_seed is None else sample_seed)
    if device is not None:
        suite.device = device
    device_names, jobs = _devices(None if devices else suite.device, devices, jobs)
    studies = plan_studies(suite, settings, strict=suite.methods != "all")
    if not studies:
        raise UserError("no method to tune: none of the methods given declares a search space")
    if dry_run:
        click.echo(plan_text(studies))
        return
    code = run_studies(suite, studies, jobs, device_names, click.echo)
    click.echo(f"tables: cmkd-bench leaderboard {suite.out}")
    if code:
        sys.exit(code)


# -- commands defined in their own modules (keep those modules light to import) -----------------
# (one `cli.add_command(...)` line each, below this comment)
from .prepare import prepare_command  # noqa: E402

cli.add_command(prepare_command)
from .suite import suite_command  # noqa: E402

cli.add_command(suite_command)
from .plots import plot_group  # noqa: E402

cli.add_command(plot_group)
from .analysis import analyze_group  # noqa: E402

cli.add_command(analyze_group)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="cmkd-bench", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `cmkd-bench`: the help, as with git
            click.echo(exc.format_message())
            sys.exit(0)
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except RunFailed as exc:
        click.echo(f"run failed: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to resume from the last finished epoch", err=True)
        sys.exit(130)
    sys.exit(0)
