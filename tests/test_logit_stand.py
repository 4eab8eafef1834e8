"""Logit standardisation (Sun et al., CVPR 2024) on kd and dkd against the authors' code, recomputed
here as sunshangquan/logit-standardization-KD has it (mdistiller/distillers/KD.py and DKD.py there,
tools/train.py's `--logit-stand --base-temp 2 --kd-weight 9`), on fixed float64 inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmkd_bench.models import ModelInfo, ModelOutput
from cmkd_bench.registry import DATASETS, METHODS

REL = 1e-10


def official_normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def official_kd_loss(z_s, z_t, temperature):
    z_s, z_t = official_normalize(z_s), official_normalize(z_t)
    log_pred_student = F.log_softmax(z_s / temperature, dim=1)
    pred_teacher = F.softmax(z_t / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def official_dkd_loss(z_s, z_t, target, alpha, beta, temperature):
    z_s, z_t = official_normalize(z_s), official_normalize(z_t)
    gt = torch.zeros_like(z_s).scatter_(1, target.unsqueeze(1), 1).bool()
    other = ~gt

    def cat_mask(t):
        return torch.cat([(t * gt).sum(1, keepdims=True), (t * other).sum(1, keepdims=True)], dim=1)

    p_s, p_t = cat_mask(F.softmax(z_s / temperature, dim=1)), cat_mask(F.softmax(z_t / temperature, dim=1))
    tckd = F.kl_div(torch.log(p_s), p_t, reduction="sum") * temperature**2 / target.shape[0]
    p_t2 = F.softmax(z_t / temperature - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(z_s / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(7)
    z_s = torch.randn(6, 10, generator=generator, dtype=torch.float64) * 3
    z_t = torch.randn(6, 10, generator=generator, dtype=torch.float64) * 5 + 2
    labels = torch.randint(10, (6,), generator=generator)
    spec = DATASETS.build("mfh-gauss", None).spec
    spec = type(spec)(**{**spec.__dict__, "num_classes": 10})
    info = ModelInfo(name="m", num_classes=10, feature_dim=4, stage_shapes={})
    out = lambda z: ModelOutput(logits=z, feature=z[:, :4], feature_post=z[:, :4])  # noqa: E731
    return out(z_s), out(z_t), {"label": labels}, spec, info


def test_kd_ls_is_the_authors_kd_with_logit_standardisation_at_their_settings(inputs):
    student, teacher, batch, spec, info = inputs
    method = METHODS.build("kd-ls", info, info, spec)
    losses = method(student, teacher, batch)
    expected = 0.1 * F.cross_entropy(student.logits, batch["label"]) + 9 * official_kd_loss(
        student.logits, teacher.logits, 2.0)
    assert (losses["ce"] + losses["kd"]).item() == pytest.approx(expected.item(), rel=REL)
    plain = METHODS.build("kd", info, info, spec, T=2.0, alpha=0.9, kd_weight=9.0)(student, teacher, batch)
    assert plain["kd"].item() != pytest.approx(losses["kd"].item(), rel=1e-3)  # the standardisation matters


def test_dkd_ls_is_the_authors_dkd_with_logit_standardisation_at_their_settings(inputs):
    student, teacher, batch, spec, info = inputs
    method = METHODS.build("dkd-ls", info, info, spec)
    method.on_epoch_start(239, 240)  # past the warm-up: weight 1, as min(epoch / 20, 1) there
    losses = method(student, teacher, batch)
    expected = F.cross_entropy(student.logits, batch["label"]) + official_dkd_loss(
        student.logits, teacher.logits, batch["label"], alpha=9.0, beta=72.0, temperature=2.0)
    assert sum(losses.values()).item() == pytest.approx(expected.item(), rel=1e-8)


def test_the_new_switches_at_their_old_values_keep_kds_and_dkds_run_ids(tmp_path):
    """logit_stand=false (and kd_weight unset) computes what records made before them computed: those
    keys stay out of the configuration, so the committed records are still found by their run ids."""
    from cmkd_bench.training.runner import RunRequest, resolve_run

    base = dict(dataset="synth-av", out=str(tmp_path), sets=("train=64", "val=32", "test=32"))
    for method, extra in (("kd", ("method.logit_stand=false",)), ("dkd", ("method.logit_stand=false",))):
        plain = resolve_run(RunRequest(method=method, **base)).config
        explicit = resolve_run(RunRequest(method=method, **{**base, "sets": (*base["sets"], *extra)})).config
        switched = resolve_run(RunRequest(method=method, **{**base, "sets": (*base["sets"], "method.logit_stand=true")})).config
        assert "logit_stand" not in plain.hparams and plain.run_id == explicit.run_id
        assert switched.hparams["logit_stand"] is True and switched.run_id != plain.run_id
