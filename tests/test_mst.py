"""MST-Distill (methods/mst.py) against Gray-OREO/MST-Distill at 093b2fe (KD_methods/MST.py,
main-MST-Distill.py): the MaskNets, the co-training and distillation losses, the load-balancing term,
the weight decays and the accumulated masks of stage 3, each recomputed here from the official
formulas; the runner's cross-modal teachers; the one-line refusal of a one-modality teacher."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmkd_bench.catalog import load_all
from cmkd_bench.errors import UserError
from cmkd_bench.experiments.plan import accepts_teacher
from cmkd_bench.method import RunContext
from cmkd_bench.models.fusion import FusionModel, model_input
from cmkd_bench.registry import DATASETS, METHODS
from cmkd_bench.reporting.analysis import run_features
from cmkd_bench.training.runner import RunRequest, build_model, resolve_run, teacher_key

from conftest import TINY_SYNTH, cli

load_all()
from cmkd_bench.methods.mst import (GateNet, MaskNet, co_training_loss, decay_factor, kd_t,  # noqa: E402
                                    load_balancing_loss)

CPU = torch.device("cpu")


# -- the official modules, written out from KD_methods/MST.py --------------------------------------
class OfficialMaskNet1d(nn.Module):
    def __init__(self, feat_dim, hidden_dim, num_heads):
        super().__init__()
        self.hidden_dim, self.seq_len = hidden_dim, feat_dim
        self.embed = nn.Linear(feat_dim, hidden_dim * feat_dim)
        self.mha = nn.MultiheadAttention(embed_dim=hidden_dim, num_heads=num_heads, batch_first=True)
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        x = self.embed(x).reshape(x.size(0), self.seq_len, self.hidden_dim)
        out, _ = self.mha(x, x, x)
        return torch.sigmoid(self.fc(out).squeeze(-1))


class OfficialMaskNet2d(OfficialMaskNet1d):
    def __init__(self, feat_dim, hidden_dim, num_heads):
        super().__init__(feat_dim, hidden_dim, num_heads)
        self.downsample = nn.Sequential(
            nn.Conv2d(feat_dim, feat_dim, 3, stride=2, padding=1, groups=feat_dim, bias=False),
            nn.Conv2d(feat_dim, feat_dim, 1, bias=False), nn.BatchNorm2d(feat_dim), nn.ReLU(inplace=True))

    def forward(self, x):
        return super().forward(F.adaptive_avg_pool2d(self.downsample(x), 1).squeeze(-1).squeeze(-1))


def official_hidden(dim, factor=2, heads=3):
    return dim // (factor * heads) * heads


@pytest.mark.parametrize("dim", [64, 128, 298])
def test_masknet_1d_is_the_official_one(dim):
    torch.manual_seed(0)
    ours = MaskNet((dim,))
    assert ours.hidden == official_hidden(dim)  # 596 -> 297, 298 -> 147 in the paper's AV-MNIST setting
    official = OfficialMaskNet1d(dim, official_hidden(dim), 3)
    official.load_state_dict(ours.state_dict())
    x = torch.randn(5, dim)
    mask = ours(x)
    assert mask.shape == (5, dim) and bool(((mask > 0) & (mask < 1)).all())
    torch.testing.assert_close(mask, official(x))


def test_masknet_2d_reduces_a_map_as_the_official_one():
    torch.manual_seed(1)
    ours = MaskNet((32, 6, 6)).eval()
    official = OfficialMaskNet2d(32, official_hidden(32), 3).eval()
    state = {key.replace("reduce.", ""): value for key, value in ours.state_dict().items()}
    official.load_state_dict(state)
    x = torch.randn(4, 32, 6, 6)
    torch.testing.assert_close(ours(x), official(x))
    assert MaskNet((32, 1, 1)).reduce is None  # a C x 1 x 1 map is a vector (hook_fn squeezes it)


def test_a_layer_too_narrow_for_a_masknet_is_refused():
    with pytest.raises(ValueError, match="too narrow"):
        MaskNet((5,))


def test_gatenet_is_two_linear_layers_without_activation():
    gate = GateNet(8, 4)
    assert [m.weight.shape for m in (gate.fc1, gate.fc2)] == [(16, 8), (4, 16)]
    z = torch.randn(3, 8)
    expected = (z @ gate.fc1.weight.T + gate.fc1.bias) @ gate.fc2.weight.T + gate.fc2.bias
    torch.testing.assert_close(gate(z), expected)


# -- losses, by hand --------------------------------------------------------------------------------
def test_load_balancing_kl_by_hand():
    gate = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    mean = [0.4, 0.4, 0.2]
    # KLDivLoss(batchmean)(log mean, uniform) on a 1-D input: sum u (log u - log mean) / 3
    expected = sum((1 / 3) * (math.log(1 / 3) - math.log(m)) for m in mean) / 3
    assert load_balancing_loss(gate, "KL").item() == pytest.approx(expected, rel=1e-6)
    assert load_balancing_loss(torch.full((4, 3), 1 / 3), "KL").item() == pytest.approx(0.0, abs=1e-7)


def test_load_balancing_cv_by_hand():
    gate = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    sums = [0.8, 0.8, 0.4]
    mean = sum(sums) / 3
    std = math.sqrt(sum((s - mean) ** 2 for s in sums) / 2)  # torch.std: unbiased
    assert load_balancing_loss(gate, "CV").item() == pytest.approx(std / mean, rel=1e-6)


def official_kl(s, t, T=4.0):
    """distillation_loss: sum_b sum_c p_t (log p_t - log p_s) / B * T^2, written out."""
    p_t = torch.softmax(t / T, 1)
    return float((p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum() / s.shape[0] * T * T)


def test_co_training_is_ce_plus_six_mutual_kl_terms():
    torch.manual_seed(2)
    z_t, z_s, z_a = torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ce = lambda z: float(F.cross_entropy(z, y))  # noqa: E731
    loss_t = ce(z_t) + official_kl(z_t, z_s) + official_kl(z_t, z_a)
    loss_s = ce(z_s) + official_kl(z_s, z_t) + official_kl(z_s, z_a)
    loss_a = ce(z_a) + official_kl(z_a, z_t) + official_kl(z_a, z_s)
    assert co_training_loss([z_t, z_s, z_a], y, 4.0).item() == pytest.approx(loss_t + loss_s + loss_a, rel=1e-5)


def test_kd_at_t4_is_the_official_distillation_loss():
    torch.manual_seed(3)
    s, t = torch.randn(4, 7) * 3, torch.randn(4, 7) * 3
    assert kd_t(s, t, 4.0).item() == pytest.approx(official_kl(s, t), rel=1e-5)


def test_the_weight_decays_follow_the_official_loop():
    w_lb, w_kl, official = 1.0, 1.0, []
    for epoch in range(100):  # main-MST-Distill.py lines 524-525, after each epoch
        official.append((w_lb, w_kl))
        w_lb *= 0.9 if epoch % 10 == 0 else 1
        w_kl *= 0.5 if epoch % 30 == 0 else 1
    for epoch in range(100):
        ours = (decay_factor(epoch, 100, 100, 10, 0.9), decay_factor(epoch, 100, 100, 30, 0.5))
        assert ours == pytest.approx(official[epoch]), epoch
    # a 20-epoch run reads the official value at 5 x its epoch
    for epoch in range(20):
        assert decay_factor(epoch, 20, 100, 10, 0.9) == pytest.approx(official[5 * epoch][0])
        assert decay_factor(epoch, 20, 100, 30, 0.5) == pytest.approx(official[5 * epoch][1])


# -- a prepared method on tiny synth-av -----------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared():
    data = DATASETS.build("synth-av", None, train=64, val=16, test=16, image_size=16)
    spec = data.spec
    torch.manual_seed(0)
    encoders = {m: build_model("small-cnn", data, m, 0, CPU) for m in ("visual", "audio")}
    teacher = FusionModel(encoders, "concat", spec.num_classes, stage_modality="visual")
    cross = build_model("small-cnn", data, "audio", 0, CPU).eval().requires_grad_(False)
    student = build_model("small-cnn", data, "visual", 1, CPU)
    method_spec = spec.with_direction("audio", "visual")
    method = METHODS.build("mst", student.info, teacher.info, method_spec)
    recipe = spec.recipe.updated(batch_size=32)
    method.context = RunContext(student=student, recipe=recipe, seed=0, teacher_modality="visual+audio",
                                student_modality="visual", cross_teachers={"audio": cross})
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    teacher.eval()
    method.prepare(teacher, data, "cpu", None)
    return method, teacher, cross, student, data, before


def test_prepare_co_trains_the_student_and_builds_three_experts_under_concat(prepared):
    method, teacher, cross, student, data, before = prepared
    # stage 1 trained the student (the engine starts from these weights) and the teachers
    assert all(not torch.equal(before[name], p) for name, p in student.named_parameters())
    assert method.report["experts"] == ["visual+audio masked at 1", "audio masked at 1", "audio masked at 2"]
    assert [len(nets) for nets in method.masknets] == [1, 2]
    assert method.masknets[0][0].channels == 128 and method.masknets[1][0].reduce is not None  # fused; A's map
    assert method.gate.fc2.out_features == 3
    # frozen for stage 3: nothing of the teachers or MaskNets is trained by the engine
    assert not any(p.requires_grad for p in (*method.teachers.parameters(), *method.masknets.parameters()))
    method.train()
    assert not method.teachers.training and not method.masknets.training and method.gate.training


def test_experts_accumulate_masks_as_the_official_stage_3(prepared):
    method, teacher, cross, student, data, _ = prepared
    batch = next(iter(data.batches("val", 8, shuffle=False)))
    x = batch["audio"]
    nets = method.masknets[1]
    with torch.no_grad():
        stage = cross.net.stages(x)  # small-cnn: stages -> pool -> fc, written out
        masked_map = stage * nets[0](stage)[:, :, None, None]
        pooled_first = masked_map.mean(dim=(2, 3))
        only_first = cross.net.fc(pooled_first)
        both = cross.net.fc(pooled_first * nets[1](pooled_first))
        pooled = stage.mean(dim=(2, 3))
        only_second = cross.net.fc(pooled * nets[1](pooled))
        fused_input = torch.cat([teacher.encoders[m](batch[m]).feature_post for m in ("visual", "audio")], dim=1)
        fused = teacher.net["head"](fused_input * method.masknets[0][0](fused_input))
    experts = method.expert_logits(batch)
    torch.testing.assert_close(experts[0], fused)
    torch.testing.assert_close(experts[1], only_first)
    torch.testing.assert_close(experts[2], both)  # the official leak: mask 1 still on for expert 2
    method.cumulative_masks = False
    try:
        torch.testing.assert_close(method.expert_logits(batch)[2], only_second)
    finally:
        method.cumulative_masks = True


def test_distillation_picks_the_top_gate_expert_and_only_balancing_trains_the_router(prepared):
    method, teacher, cross, student, data, _ = prepared
    torch.manual_seed(4)
    z_s = torch.randn(6, 8, requires_grad=True)
    experts = [torch.randn(6, 8) for _ in range(3)]
    kd, balance, top = method.distill(z_s, experts)
    gate = torch.softmax(method.gate(z_s), 1).detach()
    picks = gate.argmax(1)
    assert torch.equal(top[:, 0], picks)
    chosen = torch.stack([experts[int(e)][b] for b, e in enumerate(picks)])
    assert kd.item() == pytest.approx(official_kl(z_s.detach(), chosen), rel=1e-5)
    assert balance.item() == pytest.approx(load_balancing_loss(gate).item(), rel=1e-5)
    method.gate.zero_grad()
    kd.backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in method.gate.parameters())  # top-k: no gradient
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    balance.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.gate.parameters())


def test_forward_scales_the_terms_by_the_decays(prepared):
    method, teacher, cross, student, data, _ = prepared
    batch = next(iter(data.batches("train", 16, shuffle=False)))
    out = student(batch["visual"])
    method.on_epoch_start(0, 10)
    first = method(out, None, batch)
    method.on_epoch_start(5, 10)  # 50 of the official 100: w_lb 0.9^5, w_kl 0.5^2
    later = method(out, None, batch)
    method.on_epoch_start(0, 10)
    assert set(first) == {"ce", "kd", "balance"}
    assert later["kd"].item() == pytest.approx(first["kd"].item() * 0.25, rel=1e-5)
    assert later["balance"].item() == pytest.approx(first["balance"].item() * 0.9 ** 5, rel=1e-5)
    assert first["ce"].item() == pytest.approx(F.cross_entropy(out.logits, batch["label"]).item(), rel=1e-6)


# -- the command line and the suites -------------------------------------------------------------------
def test_cli_run_reads_the_cached_cross_modal_teacher(tmp_path):
    out = tmp_path / "runs"
    result = cli("run", "--method", "mst", "--dataset", "synth-av", "--teacher-modality", "audio+visual",
                 "--student-modality", "visual", "--epochs", "1", *TINY_SYNTH, "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    [path] = list(out.glob("mst-synth-av-visual_audio2visual-s0-*/result.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "completed" and record["teacher_modality"] == "visual+audio"
    cross = record["teacher"]["cross"]
    assert list(cross) == ["audio"] and cross["audio"]["modality"] == "audio"
    kd = resolve_run(RunRequest(method="kd", dataset="synth-av", teacher_modality="audio", student_modality="visual",
                                epochs=1, device="cpu", out=str(out), sets=tuple(TINY_SYNTH[1::2])))
    assert cross["audio"]["key"] == teacher_key(kd.config)  # the teacher a kd run audio -> visual uses
    assert record["method_report"]["experts"][0] == "visual+audio masked at 1"
    with pytest.raises(UserError, match="multimodal teacher visual\\+audio"):  # t-SNE: one line, not a crash
        run_features(path.parent, device_name="cpu", samples=8)
    again = cli("run", "--method", "kd", "--dataset", "synth-av", "--teacher-modality", "audio",
                "--student-modality", "visual", "--epochs", "1", *TINY_SYNTH, "--out", str(out))
    assert again.returncode == 0 and f"teacher {cross['audio']['key']}: reused" in again.stdout + again.stderr


def test_a_one_modality_teacher_is_refused_in_one_line(tmp_path):
    out = tmp_path / "runs"
    result = cli("run", "--method", "mst", "--dataset", "synth-av", *TINY_SYNTH, "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot distil from the one-modality teacher" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(UserError, match="multimodal --teacher-modality"):
        resolve_run(RunRequest(method="mst", dataset="synth-av", device="cpu", out=str(out)))


def test_suites_run_mst_in_the_multimodal_columns_only():
    assert not accepts_teacher("mst", None) and not accepts_teacher("mst", "audio")
    assert accepts_teacher("mst", "visual+audio")
    assert accepts_teacher("kd", "audio") and accepts_teacher("kd", "visual+audio")
    assert not accepts_teacher("mgdfr", "visual+audio")
