"""One run on several processes: torchrun, torch.distributed and DistributedDataParallel.

`torchrun --nproc-per-node N -m cmkd_bench run ...` starts N copies of `run`; each finds itself here
(torchrun's RANK / WORLD_SIZE / LOCAL_RANK), joins the process group (NCCL on CUDA, gloo on CPU)
and trains its share of every batch:

- Batches: every rank draws the recipe's batches in the same seeded order and keeps its contiguous
  part of each (`part`, torch.tensor_split), so the samples of a step are those of one process
  whatever N is. The world size must divide the training batch (one-line error otherwise).
- Gradients: the student, the method's parts and a teacher the method trains run inside one DDP
  module (engine.Fit), which averages their gradients, so a batch-mean loss gets the gradient of
  the whole batch's mean. A frozen teacher runs locally on each rank, outside DDP.
- BatchNorm: without `--sync-bn` each rank normalises over its part (DDP's usual behaviour) and
  rank 0's running statistics are broadcast before every evaluation; with `--sync-bn` statistics
  are over the whole batch: torch.nn.SyncBatchNorm on CUDA, and on CPU `_SyncOnCPU` below
  (torch's refuses CPU tensors: its batch_norm_stats kernels are CUDA-only in torch 2.14).
- Losses shown and recorded are the mean over ranks (the whole batch's for batch-mean losses);
  evaluation is sharded the same way and the metric's counts are summed over ranks (exact: no
  sample counted twice, none dropped).
- Only rank 0 writes files (files.write_atomic) and takes the run's and the teacher's locks;
  every rank reads the same checkpoint, which holds plain (unwrapped) state, so a run resumes on
  any number of processes with the same global batch.

A method with state across samples uses `gather` (e.g. CRD's memory banks): this module sits with
the extension contract, below data and methods, for that reason. docs/scaling.md has a table of
what each method does under DDP.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group
    sync_bn: bool = False

    @property
    def part(self) -> tuple[int, int]:
        """(rank, world size): which part of every batch this process takes."""
        return self.rank, self.size

    def describe(self) -> dict[str, Any]:
        """The run record's `distributed` field."""
        return {"world_size": self.size, "backend": self.backend, "sync_bn": self.sync_bn}


T = TypeVar("T")

_WORLD = World()
_BN_GROUP: Any = None  # a process group of its own for the CPU SyncBatchNorm (never interleaved with DDP's)


def world() -> World:
    return _WORLD


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def start(device: str, sync_bn: bool) -> str:
    """Join torchrun's process group where this process was started by torchrun; returns the device
    this rank uses (cuda:LOCAL_RANK for auto / cuda, else `device`). Without torchrun: `device`
    (a single process; `sync_bn` is then recorded but changes nothing)."""
    global _WORLD, _BN_GROUP
    if not launched_by_torchrun():
        _WORLD = World(sync_bn=sync_bn)
        return device
    rank, size, local = (int(os.environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} under torchrun but no CUDA device is available; use --device cpu")
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun started {size} processes on this node but it has {torch.cuda.device_count()} "
                            "CUDA device(s); use --nproc-per-node at most the GPU count")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _BN_GROUP = dist.new_group(backend="gloo") if not cuda and size > 1 else None
    _WORLD = World(rank=rank, size=size, local_rank=local, backend=backend, sync_bn=sync_bn)
    return device


def stop() -> None:
    """Leave the process group (`world()` still says which rank this was, for the last messages)."""
    global _BN_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _BN_GROUP = None


def check_batch(batch_size: int, train_size: int, what: str = "--batch-size") -> None:
    """Every rank takes an equal part of each training batch: the world size must divide it."""
    size = _WORLD.size
    effective = min(batch_size, train_size)  # a train split smaller than a batch is one batch
    if size > 1 and effective % size:
        raise UserError(f"torchrun world size {size} does not divide the training batch of {effective} samples "
                        f"({what} {batch_size}); use a batch size that is a multiple of {size} "
                        f"or --nproc-per-node that divides {effective}")


def shard(index: Tensor, part: tuple[int, int]) -> Tensor:
    """This rank's contiguous part of one batch's sample positions (torch.tensor_split)."""
    rank, size = part
    return index if size == 1 else torch.tensor_split(index, size)[rank]


def barrier() -> None:
    if _WORLD.size > 1:
        dist.barrier()


def wait_for_rank_0(ready: Callable[[], bool], every: float = 2.0) -> None:
    """Return on every rank once rank 0's `ready()` (tried on rank 0 only, every `every` seconds) is
    true. Each round is one short broadcast, so a wait of any length never holds a collective open
    past the backend's timeout (NCCL's is 10 minutes)."""
    while True:
        flag = torch.tensor([1 if _WORLD.rank == 0 and ready() else 0], dtype=torch.int32,
                            device=_collective_device())
        if _WORLD.size > 1:
            dist.broadcast(flag, 0)
        if flag.item():
            return
        time.sleep(every)


def from_rank_0(compute: Callable[[], T]) -> T:
    """`compute()` on rank 0, its value on every rank (pickled through broadcast_object_list; tensors
    arrive on the CPU). For what must be the same on every rank but may come out differently where
    each computes it (a channel ranking from non-deterministic GPU kernels). One process: compute()."""
    if _WORLD.size == 1:
        return compute()
    value = [None]
    if _WORLD.rank == 0:
        computed = compute()
        value = [computed.cpu() if isinstance(computed, Tensor) else computed]
    dist.broadcast_object_list(value, src=0)
    return value[0]


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if _WORLD.backend == "nccl" else torch.device("cpu")


# -- reductions over ranks (no-ops in a single process) ---------------------------------------
def mean(values: Tensor) -> Tensor:
    """The mean over ranks of a tensor of equal shape on each."""
    if _WORLD.size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / _WORLD.size


def first_positive_step(steps: Tensor) -> Tensor:
    """Per entry, the smallest value >= 0 over ranks (-1 where every rank has -1): the first
    non-finite step of each loss term, the same on every rank."""
    if _WORLD.size == 1:
        return steps
    big = torch.iinfo(torch.long).max
    values = torch.where(steps < 0, big, steps).long()
    dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return torch.where(values == big, -1, values)


def reduce_counts(metric: Any) -> Any:
    """Sum a metric's count tensors (its tensor attributes) over ranks, in place; returns it."""
    if _WORLD.size > 1:
        for value in vars(metric).values():
            if isinstance(value, Tensor):
                dist.all_reduce(value)
    return metric


@torch.no_grad()
def gather(tensor: Tensor) -> Tensor:
    """The tensors of every rank concatenated along dim 0 in rank order (no gradient): with
    `part`'s contiguous parts, the whole batch in the order a single process sees it. Equal sizes."""
    if _WORLD.size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(_WORLD.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def local_rows(tensor: Tensor) -> Tensor:
    """This rank's rows of a whole-batch tensor (the inverse of `gather`)."""
    return shard(tensor, _WORLD.part)


def broadcast_buffers(modules: Iterable[nn.Module]) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, e.g. before an evaluation."""
    if _WORLD.size == 1:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


# -- SyncBatchNorm ------------------------------------------------------------------------------
class _SyncOnCPU:
    """Mixed into a CPU BatchNorm*d: batch statistics (sum, sum of squares, count) summed over ranks
    with torch.distributed.nn.functional.all_reduce, whose backward sums the gradients, so the
    normalisation and its gradient are BatchNorm's over the whole batch; running statistics as
    BatchNorm keeps them (momentum, unbiased variance over the whole batch). Not torch's class:
    DDP refuses nn.SyncBatchNorm in a CPU module, and its kernels (batch_norm_stats) are CUDA-only.
    A timm BatchNormAct2d keeps its dropout and activation after the normalisation (as timm's own
    SyncBatchNormAct does)."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or _WORLD.size == 1 or _BN_GROUP is None:
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.double()
        count = x.new_tensor([input.numel() // channels])
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]), group=_BN_GROUP)
        total = stats[-1]
        batch_mean = stats[:channels] / total
        batch_var = (stats[channels:2 * channels] / total - batch_mean ** 2).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = batch_var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(factor * batch_mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = ((x - batch_mean.view(shape)) * torch.rsqrt(batch_var.view(shape) + self.eps)).to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        for after in ("drop", "act"):  # timm's BatchNormAct2d: its forward ends with drop, then act
            if isinstance(getattr(self, after, None), nn.Module):
                out = getattr(self, after)(out)
        return out


_CPU_SYNC: dict[type, type] = {}


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm*d of `module` synchronised over ranks, in place, with the same parameters,
    buffers and state-dict keys (a checkpoint loads either way), and the forward hooks it had (the
    feature models read stages by hooks): on CUDA each layer is replaced by timm's conversion
    (nn.SyncBatchNorm, or timm's SyncBatchNormAct for a BatchNormAct2d, which keeps its activation;
    torch's own converter would drop it), on CPU its class gets `_SyncOnCPU` mixed in."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert

        _replace_batchnorms(module, timm_convert)
        return module
    for sub in module.modules():
        kind = type(sub)
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not isinstance(sub, _SyncOnCPU):
            if kind not in _CPU_SYNC:
                _CPU_SYNC[kind] = type(f"Sync{kind.__name__}", (_SyncOnCPU, kind), {})
            sub.__class__ = _CPU_SYNC[kind]
    return module


def _replace_batchnorms(module: nn.Module, convert: Any) -> None:
    """Replace each BatchNorm child below `module` by `convert(child)`, keeping the child's hooks."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            synced = convert(child)
            for hooks in ("_forward_hooks", "_forward_pre_hooks"):
                getattr(synced, hooks).update(getattr(child, hooks))
            setattr(module, name, synced)
        else:
            _replace_batchnorms(child, convert)


def wrap(module: nn.Module) -> nn.Module:
    """`module` in DistributedDataParallel (gradients averaged over ranks); unchanged in one process.

    Parameters some steps do not use are allowed (find_unused_parameters); buffers are not
    broadcast at every step (a method's memory bank stays in step by its own gathers; BatchNorm
    statistics are broadcast before evaluation, `broadcast_buffers`)."""
    if _WORLD.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    options = no_forward_buffer_sync(DistributedDataParallel)
    wrapped = DistributedDataParallel(module, device_ids=None, find_unused_parameters=True, **options)
    if "broadcast_buffers" in options:  # the older keyword also skips the buffer sync at construction, which
        broadcast_buffers([module])     # the newer one keeps: do it here, so every torch starts alike
    return wrapped


def no_forward_buffer_sync(ddp_class: type) -> dict[str, bool]:
    """DDP's keyword for "no buffer broadcast at every forward" in this torch: `forward_sync_buffers`
    where it exists (torch 2.14 has it, `broadcast_buffers` deprecated), `broadcast_buffers` before it
    (torch 2.11 and older, down to pyproject's lower bound), chosen by signature, not by version."""
    parameters = inspect.signature(ddp_class.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
