"""Experiment logging while a run runs: `<run_dir>/history.csv` (always), and TensorBoard or
Weights & Biases (`run --logger`), fed by the runner's callbacks (RunCallbacks).

history.csv has a line per finished epoch, teacher (when the run trains it) and student: phase,
epoch, epochs, each loss term, val, best_val, lr, seconds (of training in that epoch). It is
rewritten atomically after each epoch, so a reader never sees half a line; a resumed run keeps the
lines of the epochs it had finished. TensorBoard and wandb are optional: neither is a dependency,
and asking for one that is not installed is a one-line error before the run starts.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..artefacts.files import write_atomic
from ..errors import UserError

if TYPE_CHECKING:
    from .engine import EpochReport

HISTORY_FILE = "history.csv"
LOGGERS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
FIXED_COLUMNS = ("phase", "epoch", "epochs")
TRAILING_COLUMNS = ("val", "best_val", "lr", "seconds")


def phase_of(label: str) -> str:
    """The phase a progress label names: "teacher" (the runner's "teacher MODALITY") or "student"."""
    return "teacher" if label.startswith("teacher") else "student"


class HistoryCSV:
    """`history.csv`: one line per finished epoch, rewritten atomically after each."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, str]]:
        """The rows written so far; none from a file that cannot be read back (damaged, not UTF-8): the
        record's history is the authority, history.csv a log rewritten from the epochs done again."""
        try:
            with open(self.path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        except (OSError, csv.Error, UnicodeDecodeError):
            return []

    def add(self, phase: str, report: EpochReport) -> None:
        # a resumed (or forced) run rewrites the epochs it does again, and keeps the earlier ones
        rows = [row for row in self.rows()
                if not (row.get("phase") == phase and _int(row.get("epoch")) >= report.epoch)]
        row = {"phase": phase, "epoch": report.epoch, "epochs": report.epochs,
               **{name: f"{value:.6g}" for name, value in report.losses.items()},
               "val": f"{report.val:.4f}", "best_val": f"{report.best_val:.4f}", "lr": f"{report.lr:.6g}",
               "seconds": f"{report.seconds:.3f}"}
        rows.append({key: str(value) for key, value in row.items()})
        losses = [key for r in rows for key in r if key not in FIXED_COLUMNS + TRAILING_COLUMNS]
        header = [*FIXED_COLUMNS, *dict.fromkeys(losses), *TRAILING_COLUMNS]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=header, restval="")
                writer.writeheader()
                writer.writerows(rows)

        write_atomic(self.path, write)


def _int(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


class ExperimentLogger:
    """What `run --logger` sends epochs and the final record to; the base logs nothing."""

    def epoch(self, phase: str, report: EpochReport, steps_per_s: float | None) -> None:
        pass

    def finish(self, record: dict[str, Any]) -> None:
        pass


class TensorBoardLogger(ExperimentLogger):
    """Per-epoch scalars under `<run_dir>/tensorboard/` (`tensorboard --logdir RUNS`), hparams at the end."""

    def __init__(self, run_dir: Path, writer_class: Any) -> None:
        self.writer = writer_class(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))

    def epoch(self, phase: str, report: EpochReport, steps_per_s: float | None) -> None:
        for name, value in report.losses.items():
            self.writer.add_scalar(f"{phase}/loss/{name}", value, report.epoch)
        self.writer.add_scalar(f"{phase}/val", report.val, report.epoch)
        self.writer.add_scalar(f"{phase}/lr", report.lr, report.epoch)
        if steps_per_s:
            self.writer.add_scalar(f"{phase}/steps_per_s", steps_per_s, report.epoch)
        self.writer.flush()

    def finish(self, record: dict[str, Any]) -> None:
        metrics = {f"hparam/{key}": value for key, value in (record.get("metrics") or {}).items()
                   if isinstance(value, (int, float))}
        if metrics:
            self.writer.add_hparams(flat_hparams(record), metrics)
        self.writer.close()


class WandbLogger(ExperimentLogger):
    """A Weights & Biases run, offline unless WANDB_MODE says otherwise (`wandb sync` uploads it)."""

    def __init__(self, run_dir: Path, run_id: str, config: dict[str, Any], wandb: Any) -> None:
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "cmkd-bench"), name=run_id, id=None,
                              dir=str(run_dir), config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                              reinit=True)

    def epoch(self, phase: str, report: EpochReport, steps_per_s: float | None) -> None:
        values = {f"{phase}/loss/{name}": value for name, value in report.losses.items()}
        values.update({f"{phase}/val": report.val, f"{phase}/lr": report.lr, f"{phase}/epoch": report.epoch})
        if steps_per_s:
            values[f"{phase}/steps_per_s"] = steps_per_s
        self.run.log(values)

    def finish(self, record: dict[str, Any]) -> None:
        for key, value in (record.get("metrics") or {}).items():
            self.run.summary[key] = value
        self.run.finish()


def flat_hparams(record: dict[str, Any]) -> dict[str, Any]:
    """The record's settings as TensorBoard hparams (numbers, strings, booleans)."""
    flat: dict[str, Any] = {key: record.get(key) for key in ("method", "dataset", "seed", "student_backbone",
                                                            "teacher_backbone", "student_modality",
                                                            "teacher_modality")}
    for scope, values in (("method", record.get("hparams") or {}),
                          ("recipe", (record.get("config") or {}).get("recipe") or {})):
        flat.update({f"{scope}.{key}": value for key, value in values.items()})
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}


def logger_factory(name: str) -> Callable[[Path, str, dict[str, Any]], ExperimentLogger]:
    """What opens the logger `--logger NAME` asks for, (run_dir, run_id, config) -> logger; its package
    is imported here, so that a missing one is a one-line UserError before the run starts."""
    if name == "none":
        return lambda run_dir, run_id, config: ExperimentLogger()
    if name == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--logger tensorboard needs the tensorboard package: pip install tensorboard") from None
        return lambda run_dir, run_id, config: TensorBoardLogger(run_dir, SummaryWriter)
    if name == "wandb":
        try:
            import wandb
        except ImportError:
            raise UserError("--logger wandb needs the wandb package: pip install 'cmkd-bench[wandb]' "
                            "(or pip install wandb)") from None
        return lambda run_dir, run_id, config: WandbLogger(run_dir, run_id, config, wandb)
    raise UserError(f"unknown logger {name!r}; use one of {', '.join(LOGGERS)}")


def with_epoch_logging(on_phase: Callable[[str, int, int], None] | None,
                       on_epoch: Callable[[EpochReport], None] | None, history: HistoryCSV,
                       logger: ExperimentLogger | None = None
                       ) -> tuple[Callable[[str, int, int], None], Callable[[EpochReport], None]]:
    """on_phase and on_epoch callbacks that also write history.csv (and the logger), then call the given ones."""
    state = {"phase": "student"}

    def phase(label: str, epochs: int, steps: int) -> None:
        state["phase"] = phase_of(label)
        if on_phase is not None:
            on_phase(label, epochs, steps)

    def epoch(report: EpochReport) -> None:
        history.add(state["phase"], report)
        if logger is not None:
            logger.epoch(state["phase"], report, report.steps / report.seconds if report.seconds else None)
        if on_epoch is not None:
            on_epoch(report)

    return phase, epoch
