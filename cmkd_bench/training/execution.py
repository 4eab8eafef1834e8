"""How a run executes, beyond what it computes: `--compile` and `--channels-last`.

Neither changes the run's configuration (its run id): both are recorded in the run record's
`execution`, as the device is. `--compile` compiles the student's and the teacher's networks in
place (`nn.Module.compile`, so state-dict keys and checkpoints stay as they are; the feature hooks
are traced with the network); off by default. `--channels-last` stores both networks' weights and
their image inputs in channels-last memory format (faster convolutions on recent GPUs); it needs
image-shaped (C x H x W) inputs. bf16 autocast stays the CUDA default either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..data.spec import DatasetSpec
from ..errors import UserError
from ..models.fusion import modalities_of


@dataclass(frozen=True)
class Execution:
    compile: bool = False
    channels_last: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


def check_execution(execution: Execution, spec: DatasetSpec, modalities: tuple[str, ...]) -> None:
    """One line for a setting this torch or these models cannot honour (before anything is written)."""
    if execution.compile and not callable(getattr(torch, "compile", None)):
        raise UserError(f"--compile needs torch.compile (torch 2.0 or later); this is torch {torch.__version__}. "
                        "Drop --compile or upgrade torch")
    if execution.channels_last:
        for modality in [m for name in modalities for m in modalities_of(name)]:  # a fusion teacher's each
            shape = spec.modality(modality).shape
            if len(shape) != 3:
                raise UserError(f"--channels-last needs image-shaped (C x H x W) inputs, but modality {modality!r} of "
                                f"dataset {spec.name!r} is {' x '.join(map(str, shape))} (a 1-D model); "
                                "drop --channels-last")


def prepare_models(execution: Execution, *models: nn.Module) -> None:
    """Apply the execution settings to the run's models (FeatureModels: their `net` is compiled; a
    fusion teacher: each encoder's `net` and its fusion head, `FusionModel.networks`)."""
    for model in models:
        if execution.channels_last:
            model.to(memory_format=torch.channels_last)
        if execution.compile:
            networks = model.networks() if hasattr(model, "networks") else [getattr(model, "net", model)]
            for network in networks:
                network.compile()


def as_input(x: Tensor | Mapping[str, Tensor], execution: Execution | None) -> Tensor | dict[str, Tensor]:
    """A batch tensor in the memory format the models expect (a fusion teacher's dict: each tensor)."""
    if isinstance(x, Mapping):
        return {name: as_input(value, execution) for name, value in x.items()}
    if execution is not None and execution.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# CPU threads of a run when nothing says otherwise, for `run` and `suite` alike: CPU results depend on
# the thread count, so it is a setting of the run (part of its run id when not this default), never
# the machine's core count (tests/test_scaling_threads.py; docs/scaling.md).
DEFAULT_THREADS = 1


def apply_threads(threads: int) -> None:
    """The run's CPU threads (torch's intra-op pool), before any model is built."""
    torch.set_num_threads(threads)


def apply_device_policy(device: torch.device) -> None:
    """This process's device and speed settings, before any model or tensor is made.

    On CUDA: the run's GPU becomes the current device (torch.cuda.set_device), so that a run on
    cuda:1 opens no context on GPU 0 (anything made on "cuda" without an index, a library's scratch
    buffer included, goes to the current device); cudnn.benchmark is on, since every run's input
    shapes are fixed (the dataset's modality shapes; only an epoch's last, smaller batch differs),
    so cudnn times its kernels once per shape and keeps the fastest. That choice, and atomics in
    some backward kernels, make GPU reruns equal within noise, not bitwise; CPU reruns are bitwise
    under the same torch version and thread count. `device_policy` says so in the record."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True


def device_policy(device: torch.device) -> dict[str, Any]:
    """What the run record's `execution` says of the device settings (nothing extra on the CPU)."""
    if device.type != "cuda":
        return {}
    return {"cudnn_benchmark": True, "autocast": "bfloat16, in training and in evaluation",
            "bitwise_reruns": False}
