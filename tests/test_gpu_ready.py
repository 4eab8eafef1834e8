"""Defects that would break the first GPU or torchrun run, each checked on CPU: the packed store a
fresh `prepare` writes is the one a run reads; torchrun on a packed store; DDP under a torch whose
DistributedDataParallel lacks `forward_sync_buffers`; --sync-bn on timm's BatchNormAct2d."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cmkd_bench import distributed
from cmkd_bench.data.checksums import write_checksums
from cmkd_bench.data.clips import CLIPS_CSV
from cmkd_bench.data.packed import PACKED_DIR, PACKED_JSON
from cmkd_bench.registry import DATASETS

from conftest import cli
from test_distributed import assert_same_training, in_process, the_record, torchrun
from test_prepare import FAKES

VIDEO = ("crema-d", "ave", "ravdess", "vggsound-50")
BUILD = {"image_size": 32, "num_workers": 0, "val_fraction": 0.5}



@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """Each video dataset's fake raw release through `cmkd-bench prepare` as a user runs it (packing at 40 px)."""
    roots = {}
    for name in VIDEO:
        raw = FAKES[name](tmp_path_factory.mktemp(f"raw-{name}"))
        root = tmp_path_factory.mktemp(f"prepared-{name}") / name
        done = cli("prepare", name, "--src", str(raw), "--dst", str(root), "--pack-size", "40", "--workers", "1")
        assert done.returncode == 0, done.stderr
        roots[name] = root
    return roots


@pytest.mark.parametrize("name", [name for name in VIDEO if name != "vggsound-50"])
def test_a_freshly_prepared_folder_trains_from_its_packed_store(prepared, name):
    """`prepare` recorded one content fingerprint in packed.json and another in checksums.json, so `auto`
    read the JPEGs and `store=packed` refused, until a later --pack-only."""
    options = {key: value for key, value in BUILD.items() if key in DATASETS.get(name).hparams}
    auto = DATASETS.build(name, prepared[name], **options)
    assert auto.spec.options["store"] == "packed"
    assert DATASETS.build(name, prepared[name], **options, store="packed").spec.options["store"] == "packed"


def test_a_protocol_with_random_audio_windows_reads_the_files_silently_and_refuses_store_packed(prepared, capsys):
    """vggsound-50 (C2KD's protocol) draws a 5 s window per sample at test too: nothing to pack."""
    from cmkd_bench.errors import UserError

    assert DATASETS.build("vggsound-50", prepared["vggsound-50"], **BUILD).spec.options["store"] == "files"
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match="draws its audio window at random"):
        DATASETS.build("vggsound-50", prepared["vggsound-50"], **BUILD, store="packed")


def test_prepare_then_run_reads_the_packed_store(prepared, tmp_path):
    result = cli("run", "--method", "kd", "--dataset", "crema-d", "--data-root", str(prepared["crema-d"]),
                 "--epochs", "1", "--batch-size", "4", "--student", "small-cnn", "--teacher", "small-cnn",
                 "--set", "image_size=32", "--set", "val_fraction=0.5", "--set", "num_workers=0",
                 "--set", "store=packed", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert the_record(tmp_path)["data_options"]["store"] == "packed"


def test_a_store_that_does_not_serve_is_named_in_one_line_and_auto_reads_the_files(prepared, tmp_path, capsys):
    import shutil

    root = tmp_path / "crema-d"
    shutil.copytree(prepared["crema-d"], root)
    # what `prepare` wrote before the fix: the store names clips.csv's hash, checksums.json the content's
    info_path = root / PACKED_DIR / PACKED_JSON
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "clips": hashlib.sha256((root / CLIPS_CSV).read_bytes()).hexdigest()[:16]}))
    write_checksums(root)
    data = DATASETS.build("crema-d", root, **BUILD)
    assert data.spec.options["store"] == "files"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: crema-d: the packed store in")
    assert "packed from other prepared content" in lines[0] and "--pack-only" in lines[0]
    from cmkd_bench.errors import UserError

    with pytest.raises(UserError, match="does not serve: it was packed from other prepared content"):
        DATASETS.build("crema-d", root, **BUILD, store="packed")


def test_torchrun_trains_from_a_packed_store_as_one_process_does(prepared, tmp_path):
    """PackedPairs.batches took no `part`: every torchrun run on a prepared video dataset raised TypeError."""
    args = ["--method", "kd", "--dataset", "crema-d", "--data-root", str(prepared["crema-d"]), "--epochs", "1",
            "--batch-size", "8", "--student", "small-cnn", "--teacher", "small-cnn", "--device", "cpu", "--quiet",
            "--set", "image_size=32", "--set", "val_fraction=0.5", "--set", "num_workers=0", "--set", "store=packed"]
    assert in_process(*args, "--out", str(tmp_path / "one")) == 0
    done = torchrun(*args, "--sync-bn", "--out", str(tmp_path / "two"))  # BatchNorm over the whole batch, as one process
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = the_record(tmp_path / "one"), the_record(tmp_path / "two")
    assert two["distributed"]["world_size"] == 2 and two["data_options"]["store"] == "packed"
    assert_same_training(one, two, tolerance=1e-4)


# -- DistributedDataParallel's keyword, by signature --------------------------------------------------
class OldDDP(nn.Module):
    """DistributedDataParallel's constructor as torch 2.11 has it (no `forward_sync_buffers`)."""

    made: list[dict] = []

    def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True,
                 process_group=None, bucket_cap_mb=None, find_unused_parameters=False):
        super().__init__()
        self.module = module
        OldDDP.made.append({"broadcast_buffers": broadcast_buffers, "find_unused_parameters": find_unused_parameters})


class NewDDP(OldDDP):
    def __init__(self, module, device_ids=None, broadcast_buffers=None, find_unused_parameters=False,
                 forward_sync_buffers=None):
        nn.Module.__init__(self)
        self.module = module
        OldDDP.made.append({"forward_sync_buffers": forward_sync_buffers, "broadcast_buffers": broadcast_buffers})


def test_the_buffer_keyword_follows_the_signature():
    assert distributed.no_forward_buffer_sync(OldDDP) == {"broadcast_buffers": False}
    assert distributed.no_forward_buffer_sync(NewDDP) == {"forward_sync_buffers": False}


@pytest.mark.parametrize("ddp, broadcasts", [(OldDDP, True), (NewDDP, False)])
def test_wrap_builds_ddp_under_either_signature_and_syncs_buffers_once_at_the_start(monkeypatch, ddp, broadcasts):
    """The old keyword also skips DDP's buffer sync at construction, which the new keyword keeps:
    `wrap` broadcasts rank 0's buffers itself then, so both start from the same buffers."""
    import torch.nn.parallel

    OldDDP.made.clear()
    synced = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp)
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=0, size=2, backend="gloo"))
    monkeypatch.setattr(distributed, "broadcast_buffers", lambda modules: synced.extend(modules))
    module = nn.BatchNorm1d(3)
    wrapped = distributed.wrap(module)
    assert isinstance(wrapped, ddp) and wrapped.module is module
    assert OldDDP.made[-1]["broadcast_buffers" if ddp is OldDDP else "forward_sync_buffers"] is False
    assert synced == ([module] if broadcasts else [])


# -- --sync-bn and timm's BatchNormAct2d ----------------------------------------------------------------
def efficientnet():
    from cmkd_bench.models.backbones import timm_backbone

    torch.manual_seed(0)
    return timm_backbone("efficientnet_b0", (3, 32, 32), 5)


def test_cuda_sync_bn_keeps_efficientnets_activations_and_the_feature_hooks():
    """torch's converter turns timm's BatchNormAct2d into a plain SyncBatchNorm, dropping its SiLU.
    (Built on the CPU: SyncBatchNorm in eval mode runs there, so outputs can be compared.)"""
    from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct

    model = efficientnet().eval()
    acts = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    distributed.convert_sync_batchnorm(model, torch.device("cuda"))
    assert sum(isinstance(m, SyncBatchNormAct) for m in model.modules()) == acts > 0
    assert not any(type(m) in (nn.BatchNorm2d, BatchNormAct2d) for m in model.modules())
    after = model(x)
    assert torch.equal(after.logits, before.logits) and torch.equal(after.feature, before.feature)
    assert after.stages.keys() == before.stages.keys()


@pytest.fixture
def one_rank_group():
    """A real gloo process group of one rank: all-reduce is the identity, so BatchNorm synchronised over
    it must equal plain BatchNorm over the same batch."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield dist.new_group(backend="gloo")
    finally:
        dist.destroy_process_group()


def test_cpu_sync_bn_keeps_efficientnets_activations(monkeypatch, one_rank_group):
    """The CPU mix-in normalised and returned, dropping BatchNormAct2d's SiLU."""
    from timm.layers.norm_act import BatchNormAct2d

    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=0, size=2, backend="gloo", sync_bn=True))
    monkeypatch.setattr(distributed, "_BN_GROUP", one_rank_group)
    torch.manual_seed(0)
    layer, reference = BatchNormAct2d(6, act_layer=nn.SiLU), BatchNormAct2d(6, act_layer=nn.SiLU)
    reference.load_state_dict(layer.state_dict())
    distributed.convert_sync_batchnorm(layer, torch.device("cpu"))
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    assert torch.allclose(layer(x), reference(x), atol=1e-5)
    assert torch.allclose(layer.running_var, reference.running_var, atol=1e-6)
    model, whole = efficientnet().train(), efficientnet().train()
    distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    assert all(isinstance(m, distributed._SyncOnCPU) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    images = torch.randn(4, 3, 32, 32)  # 49 layers in float64 statistics against float32: close, not equal
    assert torch.allclose(model(images).logits, whole(images).logits, atol=2e-2)


# -- the packed loaders' workers and shared memory ----------------------------------------------------
def _rows(item: tuple[int, int], out: dict | None = None) -> dict:
    value, n = item
    rows = torch.empty((n, 4), dtype=torch.int64) if out is None else out["rows"][:n]
    return {"rows": rows.fill_(value)}


def test_packed_loaders_honour_the_suites_worker_cap(prepared, monkeypatch):
    """`suite --jobs N` caps each run's workers (CMKD_BENCH_WORKERS); the packed path ignored it."""
    monkeypatch.setenv("CMKD_BENCH_WORKERS", "1")
    data = DATASETS.build("crema-d", prepared["crema-d"], **{**BUILD, "num_workers": 2})
    assert data.spec.options["store"] == "packed"
    assert data._loader("train", False).num_workers == 1


def test_shared_batch_buffers_are_made_for_the_batches_an_iteration_has():
    from cmkd_bench.data.loading import PersistentLoader

    loader = PersistentLoader(_rows, num_workers=2, pin_memory=False, prefetch=4)
    layout = {"rows": ((3, 4), torch.int64)}
    assert [b["rows"].tolist() for b in loader.iterate([(1, 3), (2, 3)], layout)] == [[[1] * 4] * 3, [[2] * 4] * 3]
    (slots,) = loader.slots.values()
    assert len(slots) == 2  # a two-batch split, not 4 x 2 + 1
    assert len(list(loader.iterate([(v, 2) for v in range(12)], layout))) == 12
    assert len(slots) == 9  # grown to what a long iteration needs, and no more


def test_too_little_shared_memory_is_one_line_before_anything_is_allocated(monkeypatch):
    from cmkd_bench.data import loading
    from cmkd_bench.errors import UserError

    monkeypatch.setattr(loading, "shared_memory_free", lambda: 3 << 20)  # 3 MiB free
    loader = loading.PersistentLoader(_rows, num_workers=1, pin_memory=False, prefetch=2)
    with pytest.raises(UserError) as error:
        list(loader.iterate([(v, 2) for v in range(5)], {"rows": ((1 << 17, 4), torch.int64)}))  # 4 MiB a batch
    message = str(error.value)
    assert "\n" not in message and "12 MiB of shared memory (3 batch buffers of 4.0 MiB" in message
    assert "/dev/shm has 3 MiB free" in message and "num_workers" in message
    assert loader.slots == {(("rows", (1 << 17, 4), torch.int64),): []}


# -- the smaller defects: bf16 ties, the cache's size, one ranking for every rank, the teacher lock ------
def small_cnn_pair(classes: int):
    from cmkd_bench.models.backbones import build_backbone

    data = DATASETS.build("synth-av", None, classes=classes, train=64, val=32, test=32, image_size=16)
    spec = data.spec
    torch.manual_seed(0)
    return data, build_backbone("small-cnn", spec, spec.student_modality), build_backbone("small-cnn", spec, spec.teacher_modality)


def test_c2kd_ranks_float32_proxy_logits_under_bf16_autocast(monkeypatch):
    """Kendall's tau on bf16 logits has ties the official float32 code has not (100 classes: many)."""
    import cmkd_bench.methods.c2kd as c2kd
    from cmkd_bench.registry import METHODS

    data, student, teacher = small_cnn_pair(classes=100)
    method = METHODS.build("c2kd", student.info, teacher.info, data.spec)
    batch = next(data.batches("train", 32, shuffle=False))
    ranked = []
    real = c2kd.kendall_tau
    monkeypatch.setattr(c2kd, "kendall_tau", lambda x, y: ranked.append((x, y)) or real(x, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the run's CUDA autocast does to these layers
        method(student(batch[data.spec.student_modality]), teacher(batch[data.spec.teacher_modality]), batch)
    for logits in ranked[0]:
        distinct = [len(set(row.tolist())) for row in logits]
        assert distinct == [100] * len(distinct)


def test_the_teacher_cache_limit_is_checked_against_the_bytes_the_cache_holds(monkeypatch):
    """The plan assumed 2 bytes a value on CUDA (4 elsewhere); under autocast a field is bf16 or float32
    by layer. The size is now measured from the first batch, against the limit, before allocating."""
    from cmkd_bench.training import teacher_outputs
    from cmkd_bench.training.teacher_outputs import CacheTooLarge, TeacherOutputs

    data, _, teacher = small_cnn_pair(classes=8)
    reads = frozenset({"logits", "feature", f"stage:{next(iter(teacher.info.stage_shapes))}"})
    monkeypatch.setattr(teacher_outputs, "autocast", lambda _: torch.autocast("cpu", dtype=torch.bfloat16))
    args = (teacher, data, "train", data.spec.teacher_modality, reads, torch.device("cpu"))
    held = TeacherOutputs.compute(*args)
    assert {t.dtype for t in held.fields.values()} >= {torch.bfloat16}  # not 4 bytes a value everywhere
    assert TeacherOutputs.compute(*args, max_bytes=held.nbytes).nbytes == held.nbytes
    with pytest.raises(CacheTooLarge, match=r"live: the teacher outputs would take .* GiB"):
        TeacherOutputs.compute(*args, max_bytes=held.nbytes - 1)


def test_a_value_every_rank_must_share_is_computed_on_rank_0_only(monkeypatch):
    calls, sent = [], []

    def broadcast(values, src):
        assert src == 0
        if distributed.world().rank == 0:
            sent.append(list(values))
        else:
            values[0] = torch.tensor([3.0, 1.0])  # what rank 0 sent
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    compute = lambda: calls.append(1) or torch.tensor([3.0, 1.0])  # noqa: E731
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=1, size=2, backend="gloo"))
    assert torch.equal(distributed.from_rank_0(compute), torch.tensor([3.0, 1.0])) and calls == []
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=0, size=2, backend="gloo"))
    assert torch.equal(distributed.from_rank_0(compute), torch.tensor([3.0, 1.0])) and calls == [1]
    assert torch.equal(sent[0][0], torch.tensor([3.0, 1.0]))


def test_ranks_wait_for_a_held_teacher_lock_in_short_rounds_not_one_long_collective(monkeypatch, tmp_path):
    """Rank 0 waited in flock while the other ranks sat in one barrier, past NCCL's 10-minute timeout."""
    import fcntl
    import threading

    from cmkd_bench.training import runner

    rounds = []
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=0, size=2, backend="gloo"))
    monkeypatch.setattr(dist, "broadcast", lambda flag, src: rounds.append(int(flag.item())))
    monkeypatch.setattr(runner, "is_main_process", lambda: True)
    lock = tmp_path / ".lock"
    other = open(lock, "a")  # another process's run training the teacher
    fcntl.flock(other, fcntl.LOCK_EX)
    threading.Timer(0.5, lambda: fcntl.flock(other, fcntl.LOCK_UN)).start()
    real_sleep = distributed.time.sleep
    monkeypatch.setattr(distributed.time, "sleep", lambda seconds: real_sleep(0.1))
    with runner.exclusive_lock(lock):
        pass
    other.close()
    assert rounds[-1] == 1 and rounds.count(0) >= 2  # several short rounds while it was held, then go
