"""mgdfr-ridge: this suite's cheap variant of MFH's modality-general decisive feature distillation.

Not the authors' algorithm: `mgdfr` (methods/mgdfr.py) follows their code (github.com/zihuixue/MFH,
ravdess/); this variant replaces its trained partner network by a closed-form model and its logit
KD by feature MSE, so it needs no extra training and keeps the teacher's head out of the loop.

MFH: cross-modal KD helps only through the teacher's decisive features that the student's
modality also carries ("modality-general"). The paper's Algorithm 1 finds them by permutation
salience: a model on each modality is fitted so that their outputs agree (MSE); permuting one
teacher-side channel across samples then raises the disagreement only if that channel carries
label evidence the other modality sees too. Permuting a modality-specific channel leaves the
disagreement unchanged in expectation (the other side never predicted it), and permuting a
non-decisive one does not move the teacher's output at all.

Here, once per teacher and student modality in prepare(), cached in the teacher's folder:
1. the frozen teacher's pooled feature h (what its head sees) and logits z = head(h) on the train
   split (at most `max_samples` samples, in split order);
2. the student-modality side of Alg. 1 is a cheap closed-form model instead of a trained network:
   ridge regression (penalty `ridge` per sample) onto z from the student-modality input, average-
   pooled to at most pool x pool, standardised, plus `random_features` random ReLU features.
   It is cross-fitted on two halves of the samples, so it is always scored on samples it was not
   fitted on;
3. salience_i = mean over `repeats` permutations of MSE(head(h, channel i permuted), g) - MSE(head(h), g).
The top `fraction` of channels are kept as modality-general, and training distils only those
(a text student is declined in one line: a ridge model on token ids has no meaning; `mgdfr` trains
its partner network instead):

    loss = CE + weight * MSE(P(f_s), h[:, kept])        P: a learned linear map of the student's pooled feature

The authors' RAVDESS code instead replaces the other channels by their batch mean and distils the
modified teacher's logits (that is `mgdfr`). The defaults (keep 50 %, weight 1) are this suite's
choices, not the paper's. The modality names are the spec's: the harness builds the method with
the run's direction (`spec.with_direction`); a spec as the dataset gives it holds the default one.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.data import PairedData
from cmkd_bench.errors import UserError
from cmkd_bench.method import Method, cached_per_teacher
from cmkd_bench.models import FeatureModel
from cmkd_bench.registry import METHODS

CACHE_VERSION = 1


def input_representation(x: Tensor, pool: int) -> Tensor:
    """Images and sequences average-pooled to at most pool (x pool) positions, then flattened."""
    if x.dim() == 4:
        x = F.adaptive_avg_pool2d(x, (min(pool, x.shape[2]), min(pool, x.shape[3])))
    elif x.dim() == 3:
        x = F.adaptive_avg_pool1d(x, min(pool, x.shape[2]))
    return x.flatten(1)


def ridge_predict(x_fit: Tensor, y_fit: Tensor, x_eval: Tensor, penalty: float) -> Tensor:
    """Closed-form ridge regression (intercept unpenalised via centring), in float64."""
    x_fit, y_fit, x_eval = x_fit.double(), y_fit.double(), x_eval.double()
    x_mean, y_mean = x_fit.mean(dim=0), y_fit.mean(dim=0)
    xc = x_fit - x_mean
    gram = xc.t() @ xc + penalty * len(xc) * torch.eye(xc.shape[1], dtype=xc.dtype, device=xc.device)
    coef = torch.linalg.solve(gram, xc.t() @ (y_fit - y_mean))
    return (y_mean + (x_eval - x_mean) @ coef).float()


def permutation_salience(head: nn.Module, h: Tensor, target: Tensor, repeats: int,
                         generator: torch.Generator) -> Tensor:
    """Per channel: mean rise of MSE(head(h), target) when that channel is shuffled across samples."""
    base = F.mse_loss(head(h), target)
    salience = torch.zeros(h.shape[1])
    for i in range(h.shape[1]):
        for _ in range(repeats):
            order = torch.randperm(len(h), generator=generator).to(h.device)
            shuffled = h.clone()
            shuffled[:, i] = h[order, i]
            salience[i] += (F.mse_loss(head(shuffled), target) - base).item() / repeats
    return salience


@torch.no_grad()
def channel_salience(teacher: FeatureModel, data: PairedData, teacher_modality: str, student_modality: str,
                     device: str, repeats: int, ridge: float, random_features: int, pool: int, max_samples: int,
                     seed: int) -> Tensor:
    """Algorithm 1 of MFH with a cross-fitted ridge model on the student modality (see the module doc)."""
    head = teacher.net.get_submodule(teacher.head_module)
    features, inputs, seen = [], [], 0
    for batch in data.batches("train", 256, shuffle=False, device=device):
        try:
            features.append(teacher(batch[teacher_modality]).feature_post.float())
        except RuntimeError as exc:  # a reversed run built with the dataset's spec, not the run's
            reason = str(exc).splitlines()[0]
            raise UserError(f"mgdfr-ridge: the teacher cannot read modality {teacher_modality!r} ({reason}); built with "
                            f"a spec in the dataset's default direction {teacher_modality}->{student_modality}, not "
                            f"the run's (spec.with_direction)") from exc
        inputs.append(input_representation(batch[student_modality].float(), pool))
        seen += len(batch["label"])
        if seen >= max_samples:
            break
    h, r = torch.cat(features)[:max_samples], torch.cat(inputs)[:max_samples]
    logits = head(h)
    generator = torch.Generator().manual_seed(seed)
    r = (r - r.mean(dim=0)) / (r.std(dim=0) + 1e-6)
    weights = torch.randn(r.shape[1], random_features, generator=generator).to(r.device) / r.shape[1] ** 0.5
    bias = torch.randn(random_features, generator=generator).to(r.device)
    design = torch.cat([r, torch.relu(r @ weights + bias)], dim=1)
    halves = torch.randperm(len(h), generator=generator).to(h.device).chunk(2)
    salience = torch.zeros(h.shape[1])
    for fit, held in (halves, halves[::-1]):
        predicted = ridge_predict(design[fit], logits[fit], design[held], ridge)
        salience += permutation_salience(head, h[held], predicted, repeats, generator) / 2
    return salience


@METHODS.register("mgdfr-ridge", tasks=("classification",),
                  description="this suite's MFH variant: a ridge partner on the raw student input ranks the teacher "
                              "channels; feature MSE on the kept half (not the authors' algorithm, see mgdfr)",
                  reference="after Xue, Gao, Ren, Zhao. The Modality Focusing Hypothesis: Towards Understanding "
                            "Crossmodal Knowledge Distillation. ICLR 2023 (a variant of this suite)",
                  search_space={"fraction": [0.25, 0.5, 0.75], "weight": [0.01, 0.1, 1.0, 10.0]},
                  loss_weights=("weight",))
class MGDFRRidge(Method):
    unimodal_teacher_only = "it runs the teacher on one modality's input and permutes the channels of its single linear head"
    def __init__(self, student, teacher, spec, fraction: float = 0.5, weight: float = 1.0, repeats: int = 5,
                 ridge: float = 1.0, random_features: int = 512, pool: int = 8, max_samples: int = 4096,
                 seed: int = 0):
        super().__init__(student, teacher, spec)
        if not 0 < fraction <= 1 or weight < 0:
            raise ValueError(f"need 0 < fraction <= 1 and weight >= 0, got fraction={fraction}, weight={weight}")
        if repeats < 1 or ridge <= 0 or random_features < 0 or pool < 1 or max_samples < 4:
            raise ValueError(f"need repeats >= 1, ridge > 0, random_features >= 0, pool >= 1, max_samples >= 4; got "
                             f"repeats={repeats}, ridge={ridge}, random_features={random_features}, pool={pool}, "
                             f"max_samples={max_samples}")
        if spec.modality(spec.student_modality).tokens is not None:
            raise ValueError(f"the ridge partner regresses on the raw student input, and {spec.student_modality!r} is "
                             "text, whose token ids are not features; use mgdfr (a trained partner network)")
        kept = max(1, round(fraction * teacher.feature_dim))
        self.weight, self.spec = weight, spec
        self.ranking = {"repeats": repeats, "ridge": ridge, "random_features": random_features, "pool": pool,
                        "max_samples": max_samples, "seed": seed}
        self.project = nn.Linear(student.feature_dim, kept)
        self.register_buffer("channels", torch.arange(kept))
        self.ranked = False

    def modalities(self) -> tuple[str, str]:
        """The run's direction: the spec the method was built with (the dataset's default direction outside a run)."""
        return self.spec.teacher_modality, self.spec.student_modality

    def cache_key(self) -> dict:
        teacher_modality, student_modality = self.modalities()
        return {"method": "mgdfr-ridge", "version": CACHE_VERSION, "teacher_modality": teacher_modality,
                "student_modality": student_modality, **self.ranking}

    def prepare(self, teacher, data, device, cache_dir: Path | None) -> None:
        key = self.cache_key()

        def rank() -> Tensor:
            was_training = teacher.training
            teacher.eval()
            try:
                return channel_salience(teacher, data, key["teacher_modality"], key["student_modality"], device,
                                        **self.ranking)
            finally:
                teacher.train(was_training)

        salience = cached_per_teacher(cache_dir, "mgdfr-ridge", key, rank)
        self.channels.copy_(salience.argsort(descending=True)[:len(self.channels)])
        self.ranked = True

    def teacher_reads(self):
        return frozenset({"feature_post"})

    def forward(self, student, teacher, batch):
        if not self.ranked:
            raise RuntimeError("mgdfr-ridge: prepare() must run before training; it ranks the teacher's channels")
        target = teacher.feature_post.detach()[:, self.channels]
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "mgd": self.weight * F.mse_loss(self.project(student.feature_post), target)}
