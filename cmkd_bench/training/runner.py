"""One run from configuration to record: data, teacher (trained or reused), student, method, fit.

Everything a user can get wrong (names, settings, shapes, files) is checked before anything is
written; a run that starts and fails leaves a record with status "failed" and the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__, distributed
from ..artefacts.files import (TEMPORARY_GLOB, atomic_save, check_digest, check_writable_dir, file_sha256,
                               is_main_process, load_weights, read_state_dict, remove_saved, sweep_temporaries,
                               write_atomic, write_json_atomic)
from ..artefacts.provenance import (code_digest, describe_device, environment, git_revision, library_versions,
                                    uncommitted_files, versions)  # noqa: F401
from ..artefacts.records import RECORD_SCHEMA, find_record, metric_name, write_record
from ..catalog import load_all
from ..data.spec import PairedData, Recipe
from ..data.text import vocabulary_files
from ..errors import RunFailed, UserError
from ..method import Method, RunContext
from ..models.backbones import build_backbone, init_from_weights, init_summary
from ..models.features import FeatureModel
from ..models.fusion import SEPARATOR, FusionModel, modalities_of, stages_note
from ..registry import BACKBONES, DATASETS, METHODS
from .config import RunConfig, check_finite, parse_sets, resolve, split_sets
from .engine import EpochReport, Fit, FitResult, evaluate, resolve_device
from .execution import (DEFAULT_THREADS, Execution, apply_device_policy, apply_threads, check_execution,
                        device_policy, prepare_models)
from .tracking import HISTORY_FILE, ExperimentLogger, HistoryCSV, with_epoch_logging


@dataclass
class RunRequest:
    method: str
    dataset: str
    student_modality: str | None = None
    teacher_modality: str | None = None
    student_backbone: str | None = None
    teacher_backbone: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    out: str = "runs"
    sets: tuple[str, ...] = ()
    teacher_checkpoint: str | None = None
    teacher_cache: str | None = None  # default: <out>/teachers
    student_init: str | None = None  # start the student / teacher from this weights file (what fits, by rule)
    teacher_init: str | None = None
    teacher_epochs: int | None = None  # the teacher's recipe: the student's with these epochs (default: the same)
    threads: int | None = None  # CPU threads (default execution.DEFAULT_THREADS); part of the run id otherwise
    force: bool = False
    compile: bool = False  # how it executes (cmkd_bench/training/execution.py): recorded, not part of the run id
    channels_last: bool = False
    rebuild_teacher: bool = False  # discard this run's cached teacher, train it again, and rerun the run
    # a multimodal teacher's fusion (teacher_modality "a+b"; cmkd_bench/models/fusion.py); default "concat"
    teacher_fusion: str | None = None


@dataclass
class RunCallbacks:
    """Callbacks the CLI uses to show progress; all optional."""

    on_phase: Callable[[str, int, int], None] | None = None  # (label, epochs, steps per epoch)
    on_step: Callable[[int, int], None] | None = None
    on_epoch: Callable[[EpochReport], None] | None = None
    on_message: Callable[[str], None] | None = None
    # `run --logger`: (run_dir, run_id, config) -> tracking.ExperimentLogger, opened once the run starts
    logger: Callable[[Path, str, dict[str, Any]], Any] | None = None

    def message(self, text: str) -> None:
        if self.on_message is not None:
            self.on_message(text)


@dataclass
class ResolvedRun:
    config: RunConfig
    data: PairedData
    recipe: Recipe
    device: torch.device
    run_dir: Path
    teacher_dir: Path
    teacher_checkpoint: Path | None
    student_init: Path | None = None
    teacher_init: Path | None = None
    execution: Execution = Execution()
    rebuild_teacher: bool = False


# What a one-line error about a damaged cached teacher (or its partial training) tells the user to do.
REBUILD_TEACHER = ("run the same `cmkd-bench run` command again with --rebuild-teacher to train the teacher again "
                   "(for a suite: delete that teacher's folder, then run the suite again)")
RUN_CHECKPOINT = "run the same command again with --force to discard it and train this run from the start"
ALREADY_RUNNING = "is already running in another process"


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON object the runner wrote (teacher.json), or None where it is absent or cannot be read back."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


@lru_cache(maxsize=4)
def _build_data_cached(name: str, data_root: str | None, options_json: str, _root_stamp: int | None) -> PairedData:
    return DATASETS.build(name, Path(data_root) if data_root else None, **json.loads(options_json))


def build_data(name: str, data_root: str | None, options: dict[str, Any]) -> PairedData:
    """Build a dataset, reusing the last few built in this process (a suite prepares hundreds of runs).

    The key holds the root's modification time, so a file rewritten in place is read again.
    """
    stamp = Path(data_root).stat().st_mtime_ns if data_root and Path(data_root).exists() else None
    return _build_data_cached(name, data_root, json.dumps(options, sort_keys=True), stamp)


def reads_data_root(dataset: str) -> bool:
    """Whether the dataset reads files from --data-root (the embedded and generated ones register
    reads_data_root=False)."""
    return bool(DATASETS.get(dataset).meta.get("reads_data_root", True))


def resolve_run(request: RunRequest) -> ResolvedRun:
    """Resolve and validate everything; builds the dataset but writes nothing."""
    load_all()
    method = METHODS.get(request.method)
    dataset = DATASETS.get(request.dataset)
    method_sets, data_sets, recipe_sets = split_sets(parse_sets(request.sets), method, dataset)
    for key in ("epochs", "batch_size", "lr"):
        if getattr(request, key) is not None:
            recipe_sets[key] = getattr(request, key)
    if request.data_root and not reads_data_root(dataset.name):
        raise UserError(f"dataset {dataset.name!r} reads no files, so --data-root {request.data_root!r} would be "
                        "ignored; drop --data-root (or pick a dataset that reads one, see `cmkd-bench list datasets`)")
    teacher_checkpoint = Path(request.teacher_checkpoint) if request.teacher_checkpoint else None
    if teacher_checkpoint is not None and not teacher_checkpoint.is_file():
        what = "is a folder" if teacher_checkpoint.is_dir() else "does not exist"
        raise UserError(f"teacher checkpoint {str(teacher_checkpoint)!r} {what}; pass the path of a .pt file")
    inits = {role: Path(value) if value else None
             for role, value in (("student", request.student_init), ("teacher", request.teacher_init))}
    for role, path in inits.items():
        if path is not None and not (path.is_file() or path.is_dir()):
            raise UserError(f"--{role}-init {str(path)!r} does not exist; pass the path of a .pt, .pth or .safetensors "
                            "file (or, for an hf: text backbone, a local Hugging Face model folder)")
    if teacher_checkpoint is not None and inits["teacher"] is not None:
        raise UserError("--teacher-checkpoint and --teacher-init both set the teacher's weights; pass one of them")
    if request.teacher_epochs is not None and teacher_checkpoint is not None:
        raise UserError("--teacher-epochs has no effect with --teacher-checkpoint (that teacher is not trained); "
                        "pass one of them")
    if request.threads is not None and request.threads < 1:
        raise UserError(f"--threads must be at least 1, got {request.threads}")
    if request.teacher_epochs is not None and request.teacher_epochs < 1:
        raise UserError(f"--teacher-epochs must be at least 1, got {request.teacher_epochs}")
    check_method_contract(method.name)
    device = resolve_device(request.device)
    check_finite("dataset", data_sets)  # before the dataset is built: its generators take them
    data = build_data(dataset.name, request.data_root, data_sets)
    config = resolve(
        method=method, dataset=dataset, spec=data.spec, method_sets=method_sets, recipe_sets=recipe_sets,
        student_modality=request.student_modality, teacher_modality=request.teacher_modality,
        student_backbone=request.student_backbone, teacher_backbone=request.teacher_backbone,
        seed=request.seed, teacher_checkpoint=teacher_checkpoint,
        student_init=inits["student"], teacher_init=inits["teacher"], teacher_epochs=request.teacher_epochs,
        threads=None if request.threads in (None, DEFAULT_THREADS) else request.threads,
        teacher_fusion=request.teacher_fusion,
    )
    out = Path(request.out)
    check_writable_dir(out, "--out")  # before anything is trained
    teacher_dir = Path(request.teacher_cache) if request.teacher_cache else out / "teachers"
    if request.teacher_cache:
        check_writable_dir(teacher_dir, "--teacher-cache")
    distributed.check_batch(config.recipe["batch_size"], data.spec.split_sizes["train"])  # under torchrun
    if request.rebuild_teacher and teacher_checkpoint is not None:
        raise UserError("--rebuild-teacher has no effect with --teacher-checkpoint (that teacher is not trained); "
                        "pass one of them")
    execution = Execution(compile=request.compile, channels_last=request.channels_last)
    check_execution(execution, data.spec, (config.teacher_modality, config.student_modality))
    return ResolvedRun(config, data, Recipe(**config.recipe), device, out / config.run_id, teacher_dir, teacher_checkpoint,
                       inits["student"], inits["teacher"], execution, request.rebuild_teacher)


def check_method_contract(name: str) -> None:
    """One line before any work (a teacher trains for minutes before the first step would fail) for a
    method class that does not implement the contract: `forward` returning its loss terms."""
    factory = METHODS.get(name).implementation
    if inspect.isclass(factory) and issubclass(factory, Method) and factory.forward is Method.forward:
        where = code_digest(factory)["files"]
        raise UserError(f"method {name!r} ({', '.join(where) or factory.__qualname__}) defines no "
                        f"forward(student, teacher, batch) returning its named loss terms; add it (docs/writing-a-method.md)")


def build_model(backbone: str, data: PairedData, modality: str, seed: int, device: torch.device) -> FeatureModel:
    spec = data.spec
    entry = BACKBONES.get(backbone)
    if not entry.supports(spec.task):
        raise UserError(f"backbone {backbone!r} does not support {spec.task}; see `cmkd-bench list backbones`")
    torch.manual_seed(seed)
    return build_backbone(backbone, spec, modality).to(device)


def build_teacher(config: RunConfig, data: PairedData, device: torch.device) -> FeatureModel | FusionModel:
    """The run's teacher, untrained: its modality's backbone, or for a multimodal teacher one encoder
    per modality (each built and seeded as that modality's unimodal teacher) and the fusion head,
    serving the stages of its encoder of the student's modality (cmkd_bench/models/fusion.py)."""
    if not config.multimodal_teacher:
        return build_model(config.teacher_backbone, data, config.teacher_modality, config.seed, device)
    modalities = modalities_of(config.teacher_modality)
    backbones = config.teacher_backbone.split(SEPARATOR)
    encoders = {m: build_model(b, data, m, config.seed, device) for m, b in zip(modalities, backbones)}
    torch.manual_seed(config.seed)
    model = FusionModel(encoders, config.teacher_fusion, data.spec.num_classes, stage_modality=config.student_modality)
    model.check_sizes({m: data.spec.modality(m).shape for m in modalities})
    return model.to(device)


def direction_spec(spec, teacher_modality: str, student_modality: str):
    """The spec in a run's direction (what a method is built with); a multimodal teacher's
    `teacher_modality` is its set ("visual+audio"), each of whose modalities the dataset has."""
    if len(modalities_of(teacher_modality)) == 1:
        return spec.with_direction(teacher_modality, student_modality)
    for modality in (*modalities_of(teacher_modality), student_modality):
        spec.modality(modality)
    return replace(spec, teacher_modality=teacher_modality, student_modality=student_modality)


def initialise(model: FeatureModel, path: Path | None, sha256: str | None, data: PairedData, modality: str,
               role: str, device: torch.device) -> dict[str, Any] | None:
    """Load what fits of the --student-init / --teacher-init file into `model`; the report, or None without one."""
    if path is None:
        return None
    if path.is_dir():  # a Hugging Face model folder: from_pretrained, for hf: text backbones
        from ..models.text_backbones import init_from_folder
        return init_from_folder(model, path, data.spec.modality(modality).tokens, sha256, f"--{role}-init")
    state = read_state_dict(path, device, f"--{role}-init")
    in_chans = data.spec.modality(modality).shape[0]
    return init_from_weights(model, state, in_chans, str(path), sha256, what=f"--{role}-init")


def build_method(config: RunConfig, student: FeatureModel, teacher: FeatureModel, data: PairedData,
                 device: torch.device) -> Method:
    """The run's method, built with the dataset's spec in the run's direction (its teacher and student modality)."""
    torch.manual_seed(config.seed + 1)
    spec = direction_spec(data.spec, config.teacher_modality, config.student_modality)
    try:
        method = METHODS.build(config.method, student.info, teacher.info, spec, **config.hparams)
    except (ValueError, TypeError) as exc:
        raise UserError(f"method {config.method!r} cannot be built with {config.hparams}: {exc}") from exc
    return method.to(device)


# -- teacher -------------------------------------------------------------------------------------
def teacher_key(config: RunConfig) -> str:
    identity = {"dataset": config.dataset, "options": config.data_options, "modality": config.teacher_modality,
                "backbone": config.teacher_backbone, "recipe": config.teacher_recipe, "seed": config.seed}
    if config.teacher_init_sha256:  # a teacher started from given weights is another teacher
        identity["init_sha256"] = config.teacher_init_sha256
    name = f"{config.dataset}-{config.teacher_modality}-{config.teacher_backbone}"
    if config.teacher_fusion is not None:  # a multimodal teacher: its fusion too (modalities and backbones are "+" lists)
        identity["fusion"] = config.teacher_fusion
        name += f"-{config.teacher_fusion}"
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-s{config.seed}-{digest}".replace("/", "_").replace(":", "_")


def teacher_folder(prepared: ResolvedRun) -> Path:
    """The teacher's cache folder: its weights, metrics, and what methods derive from it."""
    config = prepared.config
    if config.teacher_checkpoint_sha256:
        return prepared.teacher_dir / f"checkpoint-{config.teacher_checkpoint_sha256[:16]}-{config.teacher_modality}"
    return prepared.teacher_dir / teacher_key(config)


def obtain_cross_teachers(prepared: ResolvedRun, method: Method,
                          progress: RunCallbacks) -> dict[str, tuple[FeatureModel, dict[str, Any]]]:
    """For a method that declares `extra_teachers = ("cross",)` and a multimodal teacher: the
    one-modality teacher of each of the teacher's modalities other than the student's, with its
    record part. Each is the teacher a run in that direction (teacher modality -> the student's)
    with the same seed and recipe uses: trained once, cached under the same key, reused by both.
    The run's --teacher-checkpoint or --teacher-init (the multimodal teacher's) do not apply to them."""
    config = prepared.config
    if "cross" not in method.extra_teachers or not config.multimodal_teacher:
        return {}
    found = {}
    backbones = dict(zip(modalities_of(config.teacher_modality), config.teacher_backbone.split(SEPARATOR)))
    for modality, backbone in backbones.items():
        if modality == config.student_modality:
            continue
        one = replace(config, teacher_modality=modality, teacher_backbone=backbone, teacher_fusion=None,
                      teacher_init_sha256=None, teacher_checkpoint_sha256=None)
        sub = replace(prepared, config=one, teacher_checkpoint=None, teacher_init=None, rebuild_teacher=False)
        model = build_model(backbone, prepared.data, modality, config.seed, prepared.device)
        info = obtain_teacher(sub, model, progress)
        model.eval().requires_grad_(False)
        found[modality] = (model, info)
    return found


def obtain_teacher(prepared: ResolvedRun, teacher: FeatureModel, progress: RunCallbacks) -> dict[str, Any]:
    """Load the given or cached teacher, or train and cache it; returns the record's teacher part."""
    config, data, device = prepared.config, prepared.data, prepared.device
    info = {"modality": config.teacher_modality, "backbone": config.teacher_backbone}
    if isinstance(teacher, FusionModel):  # what methods read of it: its fused logits and feature, whose stages
        info.update(fusion=config.teacher_fusion, encoders=dict(zip(teacher.modalities, teacher.backbones)),
                    stages=stages_note(teacher, config.student_modality))
    if prepared.teacher_checkpoint is not None:
        load_weights(teacher, prepared.teacher_checkpoint, device, "teacher checkpoint")
        metrics = {split: evaluate(teacher, data, split, config.teacher_modality, device) for split in ("val", "test")}
        return {**info, "key": f"checkpoint-{config.teacher_checkpoint_sha256[:10]}",
                "checkpoint": str(prepared.teacher_checkpoint), "metrics": metrics}
    key = teacher_key(config)
    folder = teacher_folder(prepared)
    folder.mkdir(parents=True, exist_ok=True)
    # parallel runs needing one teacher train it once; under torchrun rank 0 holds the lock for all ranks
    with exclusive_lock(folder / ".lock"):
        if is_main_process():  # before the barrier, so that no rank reads the folder while it is cleaned
            if prepared.rebuild_teacher:
                discard_teacher(folder)
                progress.message(f"teacher {key}: cache discarded (--rebuild-teacher), training it again")
            sweep_temporaries(folder)
        distributed.barrier()
        metrics = _cached_or_trained_teacher(prepared, teacher, folder, key, progress)
    # the weights' digest: one cache key can hold different weights on two hosts (CPU kernels differ), and
    # the record says which it distilled from
    weights_sha256 = (read_record(folder / "teacher.json") or {}).get("weights_sha256")
    return {**info, "key": key, "checkpoint": str(folder / "teacher.pt"), "metrics": metrics,
            "recipe": config.teacher_recipe, "weights_sha256": weights_sha256}


@contextmanager
def exclusive_lock(path: Path):
    """An advisory file lock held for the block (released by the OS if the process dies).

    Under torchrun rank 0 takes it for every rank. It may wait for as long as another process (a
    suite's other run) trains the teacher: the other ranks must not wait in one collective that
    long (NCCL's timeout would end the run), so rank 0 tries the lock in rounds of a few seconds and
    every rank learns each round's outcome from a short broadcast (distributed.wait_for_rank_0)."""
    if distributed.world().size == 1:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    handle = open(path, "a") if is_main_process() else None
    try:
        distributed.wait_for_rank_0(lambda: _try_lock(handle))
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def not_this_teacher(cached: dict[str, Any], key: str, weights: Path) -> str | None:
    """Why teacher.json and teacher.pt in a teacher's folder are not this teacher's, or None: the
    summary names another key, or other weights than the file holds (a teacher.pt copied in with its
    digest passes the damage check, not this one), or predates the weights' digest."""
    if cached.get("key") != key:
        return f"teacher.json was written for teacher {cached.get('key')!r}"
    if cached.get("weights_sha256") is None:
        return "teacher.json does not name its weights (written before it recorded their SHA-256)"
    if file_sha256(weights) != cached["weights_sha256"]:
        return "teacher.pt is not the weights teacher.json was written with (another teacher's file?)"
    return None


def discard_teacher(folder: Path) -> None:
    """Everything in a teacher's cache folder but its lock: weights, metrics, partial training, what methods derived."""
    for path in folder.iterdir():
        if path.name != ".lock":
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _cached_or_trained_teacher(prepared: ResolvedRun, teacher: FeatureModel, folder: Path, key: str,
                               progress: RunCallbacks) -> dict[str, Any]:
    config, data, device = prepared.config, prepared.data, prepared.device
    weights, summary = folder / "teacher.pt", folder / "teacher.json"
    cached = read_record(summary)
    if summary.exists() and cached is None:
        progress.message(f"teacher {key}: {summary} cannot be read back (damaged); training it again")
    if weights.exists() and cached is not None:
        check_digest(weights, "cached teacher", REBUILD_TEACHER)
        foreign = not_this_teacher(cached, key, weights)
        if foreign is None:
            load_weights(teacher, weights, device, "cached teacher", REBUILD_TEACHER)
            remove_saved(folder / "train_checkpoint.pt")  # left by a kill between teacher.json and its removal
            progress.message(f"teacher {key}: reused ({cached['metric']} test {cached['metrics']['test']:.2f})")
            return cached["metrics"]
        progress.message(f"teacher {key}: {foreign}; training it again")
        discard_teacher(folder)
    objective = METHODS.build("no-kd", teacher.info, teacher.info, data.spec).to(device)
    recipe = Recipe(**config.teacher_recipe)  # the student's, with --teacher-epochs if given
    if progress.on_phase is not None:
        progress.on_phase(f"teacher {config.teacher_modality}", recipe.epochs,
                          data.num_batches("train", recipe.batch_size, shuffle=True))
    try:
        result = Fit(student=teacher, method=objective, data=data, student_modality=config.teacher_modality,
                     recipe=recipe, seed=config.seed, device=device, checkpoint=folder / "train_checkpoint.pt",
                     execution=prepared.execution, on_step=progress.on_step, on_epoch=progress.on_epoch,
                     rebuild=REBUILD_TEACHER, identity={"teacher": key},
                     on_resume=lambda epoch: progress.message(f"teacher resumed from epoch {epoch}")).run()
    except RunFailed as exc:
        raise RunFailed(f"training the teacher ({config.teacher_modality} {config.teacher_backbone}, {folder.name}) "
                        f"failed: {exc}") from exc
    metrics = {"val": result.val_best, "test": result.test, "test_last": result.test_last, "best_epoch": result.best_epoch}
    weights_sha256 = atomic_save(teacher.state_dict(), weights)
    fusion = {"fusion": config.teacher_fusion} if config.teacher_fusion is not None else {}
    write_json_atomic({"key": key, "weights_sha256": weights_sha256,
                       "modality": config.teacher_modality, "backbone": config.teacher_backbone, **fusion,
                       "dataset": config.dataset, "data_options": config.data_options, "recipe": config.teacher_recipe,
                       "seed": config.seed, "metric": result.metric, "metrics": metrics,
                       "steps_per_s": result.steps_per_s, "created": _now()}, summary)
    remove_saved(folder / "train_checkpoint.pt")
    return metrics


# -- the run -------------------------------------------------------------------------------------
def existing_record(prepared: ResolvedRun) -> dict[str, Any] | None:
    """The run's completed record, where one is there that this run would make: its run id, and its
    method's code (provenance.code_digest). Anything else is not this run's result (`not_reusable`)."""
    record = find_record(prepared.run_dir / "result.json")
    if record is None or record.get("status") != "completed":
        return None
    return None if not_reusable(prepared, record) else record


def method_code(config: RunConfig) -> dict[str, Any]:
    return code_digest(METHODS.get(config.method).implementation)


def not_reusable(prepared: ResolvedRun, record: dict[str, Any]) -> str | None:
    """Why a record in the run's folder is not this run's result, or None. A record without a code
    digest (made before records carried one) is taken as it is; the leaderboard's stale mark and
    its git revision say what is known of it."""
    folder = prepared.run_dir / "result.json"
    if record.get("run_id") != prepared.config.run_id:
        return (f"{folder} is the record of run {record.get('run_id')!r}, not of {prepared.config.run_id} "
                f"(a file from another run's folder?)")
    made_with = ((record.get("code") or {}).get("method") or {}).get("digest")
    current = method_code(prepared.config)
    if made_with is not None and made_with != current["digest"]:
        return (f"{folder} was made by other code of method {prepared.config.method!r} (the code in "
                f"{', '.join(current['files'])} has digest {current['digest']}, the record's {made_with})")
    return None


def reuse_note(prepared: ResolvedRun) -> str | None:
    """The line a run prints when it finds a record it will not reuse (it runs again)."""
    path = prepared.run_dir / "result.json"
    record = find_record(path)
    if record is None and path.exists():
        return f"{path} cannot be read back as a run record (damaged); running it again"
    if record is None or record.get("status") != "completed":
        return None
    reason = not_reusable(prepared, record)
    return None if reason is None else f"{reason}; running it again"


def execute(prepared: ResolvedRun, progress: RunCallbacks | None = None, force: bool = False) -> dict[str, Any]:
    """Train (or reuse) the teacher, train the student, write and return the run record."""
    progress = progress or RunCallbacks()
    config, data, device = prepared.config, prepared.data, prepared.device
    apply_device_policy(device)  # before any model: the GPU of this run, cudnn's kernel choice
    apply_threads(config.threads or DEFAULT_THREADS)  # the run's own count, however it was started
    force = force or prepared.rebuild_teacher  # a rebuilt teacher makes the record again
    if not force and (done := existing_record(prepared)) is not None and not leftovers(prepared.run_dir):
        return {**done, "skipped": True}
    if not force and (note := reuse_note(prepared)) is not None:
        progress.message(note)
    teacher = build_teacher(config, data, device)
    student = build_model(config.student_backbone, data, config.student_modality, config.seed, device)
    # before anything is written: a file from which nothing fits is a UserError
    inits = {"teacher": initialise(teacher, prepared.teacher_init, config.teacher_init_sha256, data,
                                   config.teacher_modality, "teacher", device),
             "student": initialise(student, prepared.student_init, config.student_init_sha256, data,
                                   config.student_modality, "student", device)}
    for role, report in inits.items():
        if report is not None:
            progress.message(init_summary(role, report))
    prepare_models(prepared.execution, teacher, student)
    method = build_method(config, student, teacher, data, device)
    if prepared.teacher_checkpoint is not None:  # a file that is not this teacher's weights: one line, nothing written
        load_weights(teacher, prepared.teacher_checkpoint, device, "teacher checkpoint")
    with run_lock(prepared.run_dir, config.run_id) if is_main_process() else nullcontext():  # torchrun: rank 0's
        return _execute_locked(prepared, teacher, student, method, progress, force, inits)


def leftovers(run_dir: Path) -> list[Path]:
    """What a killed process can leave in a run folder: its checkpoint (killed between result.json and the
    checkpoint's removal) and temporary files."""
    return [path for path in (run_dir / "checkpoint.pt", run_dir / "checkpoint.pt.sha256") if path.exists()] + \
        sorted(run_dir.glob(TEMPORARY_GLOB))


@contextmanager
def run_lock(run_dir: Path, run_id: str):
    """One process per run id at a time: a second (another suite over the same OUT) is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".run.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run {run_id} {ALREADY_RUNNING}; wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            if [p.name for p in run_dir.iterdir()] == [".run.lock"]:  # stopped before writing anything
                shutil.rmtree(run_dir, ignore_errors=True)


def _execute_locked(prepared: ResolvedRun, teacher: FeatureModel, student: FeatureModel, method: Method,
                    progress: RunCallbacks, force: bool, inits: dict[str, Any] | None = None) -> dict[str, Any]:
    config, data, device = prepared.config, prepared.data, prepared.device
    inits = inits or {}
    checkpoint = prepared.run_dir / "checkpoint.pt"
    sweep_temporaries(prepared.run_dir)
    if not force and (done := existing_record(prepared)) is not None:  # again, under the lock: another process
        remove_saved(checkpoint)  # may have finished it meanwhile; a kill after result.json leaves a checkpoint
        return {**done, "skipped": True}
    if force:
        remove_saved(checkpoint)
    began = time.perf_counter()
    record = base_record(prepared)
    # history.csv (and --logger's) per epoch, teacher and student, as the run goes
    logger = progress.logger(prepared.run_dir, config.run_id, config.as_dict()) if progress.logger else ExperimentLogger()
    on_phase, on_epoch = with_epoch_logging(progress.on_phase, progress.on_epoch,
                                            HistoryCSV(prepared.run_dir / HISTORY_FILE), logger)
    progress = replace(progress, on_phase=on_phase, on_epoch=on_epoch)
    record["student_init"] = inits.get("student")  # what --student-init loaded, adapted and skipped
    try:
        record["teacher"] = obtain_teacher(prepared, teacher, progress)
        if isinstance(teacher, FusionModel):
            fused = "decoder maps" if teacher.dense else "pooled features"
            progress.message(f"teacher {config.teacher_modality} ({config.teacher_fusion} fusion of "
                             f"{config.teacher_backbone}): methods read its fused logits and its encoders' "
                             f"concatenated {fused}; stages: {record['teacher']['stages']}")
        record["teacher"]["init"] = inits.get("teacher")
        record["teacher"]["trained_by_method"] = method.trains_teacher
        cross = obtain_cross_teachers(prepared, method, progress)
        if cross:  # what the method reads besides the run's teacher (Method.extra_teachers)
            record["teacher"]["cross"] = {modality: info for modality, (_, info) in cross.items()}
        teacher.eval()
        method.context = RunContext(student=student, recipe=prepared.recipe, seed=config.seed,
                                    teacher_modality=config.teacher_modality, student_modality=config.student_modality,
                                    cross_teachers={modality: model for modality, (model, _) in cross.items()})
        method.prepare(teacher, data, str(device), teacher_folder(prepared))
        if progress.on_phase is not None:
            progress.on_phase(f"{config.method} {config.teacher_modality}→{config.student_modality}",
                              prepared.recipe.epochs, data.num_batches("train", prepared.recipe.batch_size, shuffle=True))
        result = Fit(student=student, method=method, data=data, student_modality=config.student_modality,
                     recipe=prepared.recipe, seed=config.seed, device=device, checkpoint=checkpoint,
                     teacher=teacher, teacher_modality=config.teacher_modality, execution=prepared.execution,
                     rebuild=RUN_CHECKPOINT, identity=run_identity(prepared),
                     on_step=progress.on_step, on_epoch=progress.on_epoch,
                     on_resume=lambda epoch: progress.message(f"resumed from epoch {epoch}")).run()
    except RunFailed as exc:
        record.update(status="failed", error=str(exc), wall_time_s=time.perf_counter() - began)
        write_record(record, prepared.run_dir / "result.json")
        logger.finish(record)
        raise
    record.update(completed_record(result, time.perf_counter() - began))
    if getattr(method, "report", None):  # what a stage-wise method says of its stages (mst: losses, experts)
        record["method_report"] = method.report
    # the best-val weights (Fit leaves them loaded), for analyses such as t-SNE of features
    atomic_save(student.state_dict(), prepared.run_dir / "student.pt")
    record["student_checkpoint"] = str(prepared.run_dir / "student.pt")
    for name, text in vocabulary_files(data.spec).items():  # a text modality's word vocabulary, by id
        write_atomic(prepared.run_dir / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    if method.trains_teacher:
        atomic_save(teacher.state_dict(), prepared.run_dir / "teacher_finetuned.pt")
        record["teacher"]["finetuned_checkpoint"] = str(prepared.run_dir / "teacher_finetuned.pt")
        record["teacher"]["metrics_after_method"] = {
            split: evaluate(teacher, data, split, config.teacher_modality, device) for split in ("val", "test")}
    write_record(record, prepared.run_dir / "result.json")
    remove_saved(checkpoint)
    logger.finish(record)
    return record


def run_identity(prepared: ResolvedRun) -> dict[str, Any]:
    """What the run's checkpoints carry and a resume checks: whose training state it is."""
    return {"run_id": prepared.config.run_id, "method_code": method_code(prepared.config)["digest"]}


def base_record(prepared: ResolvedRun) -> dict[str, Any]:
    config = prepared.config
    return {
        "schema": RECORD_SCHEMA,
        "run_id": config.run_id,
        "status": "running",
        "error": None,
        "method": config.method,
        "dataset": config.dataset,
        "task": config.task,
        "student_modality": config.student_modality,
        "teacher_modality": config.teacher_modality,
        "student_backbone": config.student_backbone,
        "teacher_backbone": config.teacher_backbone,
        "seed": config.seed,
        "hparams": config.hparams,
        "hparams_changed": config.hparams_changed,
        "data_options": config.data_options,
        "config": config.as_dict(),
        "metric": metric_name(config.task),
        "metrics": None,
        "teacher": None,
        "device": describe_device(prepared.device),
        "distributed": distributed.world().describe(),  # world size, backend, sync BN (torchrun)
        # --compile, --channels-last; on CUDA also cudnn.benchmark and bf16 autocast (execution.device_policy)
        "execution": {**prepared.execution.as_dict(), **device_policy(prepared.device)},
        "code": {"method": method_code(config)},  # checked before the record is reused (not_reusable)
        "versions": versions(),
        "git_revision": git_revision(),
        "environment": environment(),
        "created": _now(),
    }


def completed_record(result: FitResult, wall: float) -> dict[str, Any]:
    return {
        "status": "completed",
        "metric": result.metric,
        "metrics": {"val_best": result.val_best, "test": result.test, "test_last": result.test_last,
                    "best_epoch": result.best_epoch},
        "test_details": result.test_details,  # segmentation: pixel accuracy and per-class IoU
        "resumed_from_epoch": result.resumed_from,
        "history": result.history,
        "wall_time_s": round(wall, 3),
        "train_steps": result.train_steps,
        "train_seconds": round(result.train_seconds, 3),
        "steps_per_s": round(result.steps_per_s, 3),
        "teacher_outputs": result.teacher_outputs,  # "cached" or why the teacher ran every step
    }


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
