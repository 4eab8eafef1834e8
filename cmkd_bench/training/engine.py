"""The training loop shared by teachers and students: losses, selection on val, checkpoints.

The engine knows nothing of a method's internals: it runs the models, asks the method for named
loss terms, sums them and logs each. Model selection is on the validation split; the test split
is read twice, at the best-val weights and at the last epoch's.

Under torchrun (cmkd_bench.distributed) each rank trains on its part of every batch inside one
DistributedDataParallel module, and evaluation is sharded and its counts summed over ranks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .. import distributed
from ..artefacts.files import atomic_save, load_checked
from ..data.spec import PairedData, Recipe
from ..errors import RunFailed, UserError
from ..method import Method
from ..models.features import FeatureModel
from ..models.fusion import model_input, modalities_of
from ..recipes import autocast, build_optimizer, lr_factor
from .execution import Execution, as_input
from .metrics import metric_for
from .teacher_outputs import CachePlan, CacheTooLarge, TeacherOutputs, plan as teacher_cache_plan


def _identity_text(identity: Any) -> str:
    if isinstance(identity, dict):
        return ", ".join(f"{key} {value}" for key, value in identity.items())
    return repr(identity)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda:"):
        index = name.removeprefix("cuda:")
        if not index.isdigit():
            raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N (N a GPU index)")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index) >= count:
            have = f"only {count} CUDA device(s) (cuda:0 to cuda:{count - 1})" if count else "no CUDA device"
            raise UserError(f"--device {name} was asked for but this machine has {have}; "
                            "use --device cpu, auto or an existing GPU")
    return torch.device(name)


def trainable_parameters(student: nn.Module, method: Method, teacher: nn.Module | None) -> list[nn.Parameter]:
    """Student, then the method's own parts, then the teacher if the method trains it; no duplicates."""
    teacher_ids = {id(p) for p in teacher.parameters()} if teacher is not None else set()
    seen: set[int] = set()
    params = []
    for group in (student.parameters(), method.parameters(), teacher.parameters() if method.trains_teacher and teacher else ()):
        for p in group:
            trainable_teacher = method.trains_teacher and id(p) in teacher_ids
            if id(p) in seen or (id(p) in teacher_ids and not trainable_teacher) or not p.requires_grad:
                continue
            seen.add(id(p))
            params.append(p)
    return params


def parameter_groups(student: nn.Module, method: Method, teacher: nn.Module | None) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: one, or two when the method sets the teacher's weight decay."""
    params = trainable_parameters(student, method, teacher)
    if teacher is None or not method.trains_teacher or method.teacher_weight_decay is None:
        return [{"params": params}]
    teacher_ids = {id(p) for p in teacher.parameters()}
    groups = [{"params": [p for p in params if id(p) not in teacher_ids]},
              {"params": [p for p in params if id(p) in teacher_ids], "weight_decay": method.teacher_weight_decay}]
    return [group for group in groups if group["params"]]


EVAL_PIXELS = 1 << 21  # per evaluation batch: 2M label pixels, e.g. six 480 x 640 images


def eval_batch_size(data: PairedData, modality: str) -> int:
    """256 samples, fewer for segmentation of large images (logits are B x C x H x W); for a fusion
    teacher ("rgb+depth"), the fewest of its modalities'."""
    if len(modalities_of(modality)) > 1:
        return min(eval_batch_size(data, name) for name in modalities_of(modality))
    shape = data.spec.modality(modality).shape
    if data.spec.task != "segmentation" or len(shape) < 3:
        return 256
    return max(1, min(256, EVAL_PIXELS // (shape[-1] * shape[-2])))


@torch.no_grad()
def evaluate_metric(model: FeatureModel, data: PairedData, split: str, modality: str, device: torch.device,
                    batch_size: int | None = None):
    """The task's metric accumulated over a split (read it with .compute() or .details())."""
    was_training = model.training
    model.eval()
    spec = data.spec
    metric = metric_for(spec.task)(spec.num_classes, spec.ignore_index, device)
    with autocast(device):
        for batch in batches(data, split, batch_size or eval_batch_size(data, modality), shuffle=False, device=device):
            metric.update(model(model_input(batch, modality)).logits.float(), batch["label"])
    model.train(was_training)
    return distributed.reduce_counts(metric)  # under torchrun: every rank's counts, summed


def batches(data: PairedData, split: str, batch_size: int, **options: Any):
    """`data.batches`, this rank's part of each batch under torchrun (every PairedData takes `part`)."""
    world = distributed.world()
    if world.size > 1:
        options["part"] = world.part
    return data.batches(split, batch_size, **options)


class TrainStep(nn.Module):
    """The modules one training step trains, as one module for DistributedDataParallel; its
    forward is the step's forward (`losses`: the batch -> the method's loss terms)."""

    def __init__(self, modules: dict[str, nn.Module], losses: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.losses = losses

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.losses(batch)


def evaluate(model: FeatureModel, data: PairedData, split: str, modality: str, device: torch.device,
             batch_size: int | None = None) -> float:
    """The one number model selection reads: top-1 or mIoU, in percent."""
    return evaluate_metric(model, data, split, modality, device, batch_size).compute()


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    losses: dict[str, float]
    val: float
    best_val: float
    lr: float
    seconds: float = 0.0  # of training in this epoch (evaluation excluded)
    steps: int = 0  # training steps in this epoch


@dataclass
class FitResult:
    metric: str
    val_best: float
    best_epoch: int
    test: float
    test_last: float
    train_steps: int
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    teacher_outputs: str = ""  # "cached" or why the teacher ran every step (cmkd_bench/training/teacher_outputs.py)
    # test at the best-val weights, beyond the one number: for segmentation pixel accuracy and
    # per-class IoU (percent); empty for classification
    test_details: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.train_steps / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class Fit:
    """One training job: a student trained by a method, optionally against a teacher."""

    student: FeatureModel
    method: Method
    data: PairedData
    student_modality: str
    recipe: Recipe
    seed: int
    device: torch.device
    checkpoint: Path | None = None
    teacher: FeatureModel | None = None
    # the teacher's modality; a multimodal teacher's "a+b" (models/fusion.py), fed the dict of its modalities
    teacher_modality: str | None = None
    on_step: Callable[[int, int], None] | None = None  # (step in epoch, steps per epoch)
    on_epoch: Callable[[EpochReport], None] | None = None
    on_resume: Callable[[int], None] | None = None  # (epochs already finished) when a checkpoint is picked up
    check_every: int = 0  # steps between host syncs for the non-finite check; 0: 1 on CPU, 50 on CUDA
    cache_teacher: bool = True  # serve a frozen teacher's outputs from a per-run cache where valid
    execution: Execution | None = None  # --channels-last: inputs in channels-last memory format
    # what a damaged or foreign checkpoint's one-line error tells the user to do
    rebuild: str = "rerun with --force to discard it and train this run from the start"
    # whose training state the checkpoint holds (the runner's run id and method code, or teacher key):
    # saved in it, and a checkpoint with another is refused like a damaged one
    identity: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.uses_teacher = self.teacher is not None and self.method.uses_teacher
        # --sync-bn under torchrun: the same parameters and state keys, so any checkpoint loads; the
        # method's own layers too (fitnet's regressor, c2kd's proxies train with the student)
        if distributed.world().sync_bn and distributed.world().size > 1:
            distributed.convert_sync_batchnorm(self.student, self.device)
            distributed.convert_sync_batchnorm(self.method, self.device)
            if self.method.trains_teacher and self.teacher is not None:
                distributed.convert_sync_batchnorm(self.teacher, self.device)
        self.params = trainable_parameters(self.student, self.method, self.teacher)
        self.optimizer = build_optimizer(parameter_groups(self.student, self.method, self.teacher), self.recipe)
        self.steps_per_epoch = self.data.num_batches("train", self.recipe.batch_size, shuffle=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(self.recipe, step, self.steps_per_epoch))
        if not self.check_every:
            self.check_every = 1 if self.device.type == "cpu" else 50
        self.teacher_plan = teacher_cache_plan(self.method, self.teacher, self.data, self.teacher_modality, self.device)
        if not self.cache_teacher and self.teacher_plan.cached:
            self.teacher_plan = CachePlan(False, "live: the cache was turned off")
        self.teacher_cache: TeacherOutputs | None = None
        self._last_size: dict[str, Tensor] = {}  # each loss term's latest finite |value|: who to blame in a tie
        trained = {"student": self.student, "method": self.method}
        if self.method.trains_teacher and self.teacher is not None:
            trained["teacher"] = self.teacher
        self.trained = list(trained.values())
        # the step's forward: in DistributedDataParallel under torchrun (gradients averaged over ranks)
        self.step = distributed.wrap(TrainStep(trained, self._losses))

    def _losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        student_out = self.student(as_input(model_input(batch, self.student_modality), self.execution))
        return self.method(student_out, self._teacher_output(batch), batch)

    # -- state -------------------------------------------------------------------------------
    def _model_states(self) -> dict[str, Any]:
        states = {"student": self.student.state_dict(), "method": self.method.state_dict()}
        if self.method.trains_teacher and self.teacher is not None:
            states["teacher"] = self.teacher.state_dict()
        return states

    def _load_model_states(self, states: dict[str, Any]) -> None:
        self.student.load_state_dict(states["student"])
        self.method.load_state_dict(states["method"])
        if "teacher" in states and self.teacher is not None:
            self.teacher.load_state_dict(states["teacher"])

    def _snapshot(self) -> dict[str, Any]:
        return {k: {n: t.detach().clone() for n, t in v.items()} for k, v in self._model_states().items()}

    def _save(self, epoch: int, best: dict[str, Any], history: list[dict[str, Any]], steps: int, seconds: float) -> None:
        if self.checkpoint is None:
            return
        state = {
            "epoch": epoch,
            "models": self._model_states(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "best": best,
            "history": history,
            "steps": steps,
            "seconds": seconds,
            "identity": self.identity,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        atomic_save(state, self.checkpoint)

    def _resume(self) -> dict[str, Any] | None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        state = load_checked(self.checkpoint, "checkpoint", self.rebuild, self.device)
        if self.identity is not None and isinstance(state, dict) and state.get("identity") != self.identity:
            found = state.get("identity")
            whose = "names no run (written before checkpoints did)" if found is None else f"is of {_identity_text(found)}"
            raise UserError(f"checkpoint {str(self.checkpoint)!r} {whose}, not of {_identity_text(self.identity)}; "
                            f"{self.rebuild}")
        try:
            missing = [key for key in ("epoch", "models", "optimizer", "scheduler", "rng", "best", "history",
                                       "steps", "seconds") if key not in state]
            if missing:
                raise KeyError(missing[0])
            self._load_model_states(state["models"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"].cpu())
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            text = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:200]
            raise UserError(f"checkpoint {str(self.checkpoint)!r} does not hold this run's training state "
                            f"({text}); {self.rebuild}") from exc
        return state

    # -- loop --------------------------------------------------------------------------------
    def _set_modes(self) -> None:
        self.student.train()
        self.method.train()
        if self.teacher is not None:
            self.teacher.train(self.method.trains_teacher)
            self.teacher.requires_grad_(self.method.trains_teacher)

    def _teacher_output(self, batch: dict[str, Tensor]):
        if not self.uses_teacher:
            return None
        assert self.teacher is not None and self.teacher_modality is not None
        if self.teacher_cache is not None:
            return self.teacher_cache.gather(batch["index"])
        x = as_input(model_input(batch, self.teacher_modality), self.execution)  # a fusion teacher: a dict
        if self.method.trains_teacher:
            return self.teacher(x)
        with torch.no_grad():
            return self.teacher(x)

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], int]:
        self._set_modes()
        self.method.on_epoch_start(epoch, self.recipe.epochs)
        sums: dict[str, Tensor] = {}
        first_bad: dict[str, Tensor] = {}
        steps = 0
        train = batches(self.data, "train", self.recipe.batch_size, shuffle=True,
                        seed=self.seed * 1_000_003 + epoch, device=self.device)
        for steps, batch in enumerate(train, start=1):
            if steps == 1 and (missing := self.method.needs - batch.keys()):
                raise UserError(f"method {type(self.method).__name__} needs {', '.join(sorted(missing))} in every batch, "
                                f"which dataset {self.data.spec.name!r} does not provide")
            self.method.on_step_start(steps, self.steps_per_epoch)
            with autocast(self.device):
                losses = self.step(batch)
            total = torch.stack([v.float() for v in losses.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.scheduler.step()
            for name, value in losses.items():
                value = value.detach().float()
                sums[name] = sums.get(name, 0) + value
                if name not in first_bad:  # a device-side fill: no host-to-device copy per step
                    first_bad[name] = torch.full((), -1, dtype=torch.long, device=self.device)
                first_bad[name] = torch.where(~torch.isfinite(value) & (first_bad[name] < 0), steps, first_bad[name])
                self._last_size[name] = torch.where(torch.isfinite(value), value.abs(),
                                                    self._last_size.get(name, torch.zeros_like(value)))
            if steps % self.check_every == 0 or steps == self.steps_per_epoch:
                self._check_finite(first_bad, epoch)
            if self.on_step is not None:
                self.on_step(steps, self.steps_per_epoch)
        self._check_finite(first_bad, epoch)
        names = list(sums)  # under torchrun: the mean over ranks (the whole batch's, for batch-mean terms)
        means = distributed.mean(torch.stack([sums[name] / steps for name in names])).tolist()
        return dict(zip(names, means)), steps

    def _check_finite(self, first_bad: dict[str, Tensor], epoch: int) -> None:
        """Fail on the term that went non-finite first; where several did at one step (a term's overflow
        poisons the weights, so every term is NaN the step after), the one that was largest before."""
        if distributed.world().size > 1:  # every rank stops at the same step (no rank left waiting)
            names = list(first_bad)
            first_bad = dict(zip(names, distributed.first_positive_step(torch.stack([first_bad[n] for n in names]))))
        bad = {name: int(step) for name, step in first_bad.items() if int(step) >= 0}
        if bad:
            step = min(bad.values())
            tied = [name for name in first_bad if bad.get(name) == step]
            sizes = {name: float(self._last_size[name]) for name in tied if name in self._last_size}
            name = max(tied, key=lambda n: sizes.get(n, 0.0)) if len(tied) > 1 else tied[0]
            also = ""
            if len(tied) > 1:
                before = ", ".join(f"{n} {sizes.get(n, 0.0):.3g}" for n in tied)
                also = (f" (with {', '.join(repr(n) for n in tied if n != name)} at the same step; blamed as the "
                        f"largest before: {before})")
            raise RunFailed(f"loss term {name!r} became non-finite at epoch {epoch + 1}, step {step}{also}")

    def run(self) -> FitResult:
        torch.manual_seed(self.seed)
        metric = metric_for(self.data.spec.task).name
        start_epoch, history, steps_done, seconds = 0, [], 0, 0.0
        best: dict[str, Any] = {"val": -math.inf, "epoch": -1, "states": self._snapshot()}
        resumed = self._resume()
        if resumed is not None:
            start_epoch = resumed["epoch"] + 1
            history, best = resumed["history"], resumed["best"]
            steps_done, seconds = resumed["steps"], resumed["seconds"]
            if self.on_resume is not None:
                self.on_resume(start_epoch)
        if self.teacher_plan.cached and start_epoch < self.recipe.epochs:  # the teacher is fixed from here on
            assert self.teacher is not None and self.teacher_modality is not None
            try:
                self.teacher_cache = TeacherOutputs.compute(self.teacher, self.data, "train", self.teacher_modality,
                                                            self.method.teacher_reads(), self.device,
                                                            eval_batch_size(self.data, self.teacher_modality))
            except CacheTooLarge as reason:
                self.teacher_plan = CachePlan(False, str(reason))
        for epoch in range(start_epoch, self.recipe.epochs):
            began = time.perf_counter()
            losses, steps = self._train_epoch(epoch)
            epoch_seconds = time.perf_counter() - began
            seconds += epoch_seconds
            steps_done += steps
            distributed.broadcast_buffers(self.trained)  # rank 0's BatchNorm statistics
            val = evaluate(self.student, self.data, "val", self.student_modality, self.device)
            if val > best["val"]:
                best = {"val": val, "epoch": epoch, "states": self._snapshot()}
            lr = self.optimizer.param_groups[0]["lr"]
            history.append({"epoch": epoch + 1, "losses": losses, "val": val, "lr": lr})
            if self.on_epoch is not None:  # first: the epoch's history row is on disk before a checkpoint claims it
                self.on_epoch(EpochReport(epoch + 1, self.recipe.epochs, losses, val, best["val"], lr,
                                          epoch_seconds, steps))
            self._save(epoch, best, history, steps_done, seconds)
        test_last = evaluate(self.student, self.data, "test", self.student_modality, self.device)
        self._load_model_states(best["states"])
        tested = evaluate_metric(self.student, self.data, "test", self.student_modality, self.device)
        return FitResult(metric=metric, val_best=best["val"], best_epoch=best["epoch"] + 1, test=tested.compute(),
                         test_last=test_last, train_steps=steps_done, train_seconds=seconds, history=history,
                         resumed_from=start_epoch if resumed is not None else None, test_details=tested.details(),
                         teacher_outputs=self.teacher_plan.reason)
