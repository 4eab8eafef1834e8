"""MST-Distill (ACM MM 2025): a mixture of specialised teachers for cross-modal distillation. The
multimodal teacher and the cross-modal (other modality's) teacher are co-trained with the student,
then each is specialised by learned feature masks, and a router on the student's logits picks,
per sample, which masked teacher the student distils from.

Reference read: Gray-OREO/MST-Distill at commit 093b2fe (HEAD; the paper's release is 087db1c),
main-MST-Distill.py and KD_methods/MST.py:
- stage 1, co-training (main-MST-Distill.py lines 162-227): the multimodal teacher T, the auxiliary
  teacher A (a one-modality model of the modality the student lacks: `--AUXmodel`) and the student S
  train together with one Adam (lr `--s1_lr` 1e-4) over all three, each on CE plus the KL towards
  the other two at T = 4 (`distillation_loss`: KLDiv(batchmean)(log_softmax(x / 4), softmax(y / 4))
  * 16, nothing detached), for `--epochs_s1` epochs (1 at HEAD, 100 in the release);
- stage 2, specialisation (lines 230-350): T, A, S frozen in eval mode; per teacher, one MaskNet per
  masked layer (`--mask_layer_num` 2) on a forward hook that multiplies the layer's output by the
  MaskNet's sigmoid mask; each MaskNet alone (its hook removed after each forward), with its own Adam
  (`--s2_lr` 1e-4), is trained so that the masked teacher's logits match the student's detached
  ones: `distillation_loss_detached(masked teacher logits, student logits)`, no labels; per epoch
  the validation loss (the mean over T's masks plus the mean over A's) picks the best MaskNet states
  (`--epochs_s2` epochs: 1 at HEAD, 100 in the release);
- stage 3, distillation (lines 353-533): the masked teachers are the experts (T with each mask,
  then A with each mask: TGroup_forward / AGroup_forward); a GateNet (Linear(C, 2C) -> Linear(2C, E),
  no activation) on the student's logits gives softmax gate probabilities; the student distils from
  its top-k experts (`--k` 1) at T = 4 with the teacher side detached
  (`k_ways_MTGdistillation_detached`, the mean over the k), plus a load-balancing term
  (`load_balancing_loss`, `--lb_mode` KL): KLDivLoss(batchmean)(log mean_b gate, uniform), i.e.
  sum_e (1/E)(log(1/E) - log mean_b gate_e) / E; mode CV is std/mean of the per-expert gate sums;
      loss = w_task * CE + w_kl * KD_top-k + w_lb * LB        (w_task = w_kl = w_lb = 1)
  one Adam (`--lr` 1e-4) over the student and the GateNet; after epoch e (0-based) of 100, w_lb is
  multiplied by 0.9 when e % 10 == 0 and w_kl by 0.5 when e % 30 == 0 (lines 524-525). The student
  continues from its stage-1 weights (the same `model_s`).
- MaskNet (MaskNet_1d / MaskNet_2d): on a vector of D features (a map is first reduced: depthwise 3x3
  stride-2 convolution, 1x1 convolution, BatchNorm, ReLU, global average pooling), Linear(D, H * D)
  reshaped to D tokens of H features, 3-head self-attention (`--mask_head_num`), Linear(H, 1) per
  token, sigmoid: one mask value per channel, H = D // (2 * 3) * 3 (`--hidden_dim_factor` 2).

What it reads here:
- T is the run's multimodal teacher (`--teacher-modality a+b`; a one-modality teacher is refused),
  A the one-modality teacher of each of T's other modalities than the student's (for two
  modalities, the one; Method.extra_teachers "cross": the same cached teacher as a run in that
  direction). Stage 1 trains them in memory; their cached files are not changed.
- Masked layers, in forward order, up to `mask_layer_num` per teacher. A (a benchmark backbone):
  its last stage's output map (`--AUXmodel` ThreeLayerCNN-A's masked `conv3`, LeNet5's `conv2`/
  `conv3`) and its pooled feature where its classifier reads it (the official `fc1` of the branches).
  T: the concatenated features its fusion head reads (AV-MNIST's `concat_identity`) and, under the
  `concat-mlp` fusion, that head's first layer's output (AV-MNIST's `fc1`). The default `concat`
  fusion is one linear layer after the concatenation, so there T gives one expert and the mixture
  has three (T, A with its first mask, A with both); MST-Distill's teachers have two masked layers
  each, all at or after the fusion point.
- Experts with masks accumulated, as the official stage 3 computes them: TGroup_forward and
  AGroup_forward register one hook per MaskNet and remove them only after all the group's forwards,
  so the second expert of a teacher runs with its first mask still on (T with mask 1, T with masks
  1 and 2). Stage 2 trains each MaskNet alone. `cumulative_masks=false` gives each expert its own
  mask only.

Deliberate differences:
- T and A start from the run's trained, cached teachers (the official script builds them untrained
  and trains them only by stage 1's co-training), so that mst distils from the same teacher as every
  other row of a table; stage 1 then co-trains them with the student for `epochs_s1` epochs (1, the
  HEAD default).
- Stage 3 uses the run's recipe (its optimiser, learning rate, schedule, epochs), as every method
  here; the official Adam at 1e-4 is stage 3's only recipe. Stages 1 and 2 keep their own Adam at
  1e-4 and the run's batch size, and run inside `prepare` on the train split the engine uses (under
  torchrun every rank runs them on the whole split with the same seeds).
- The weight decays are laid out over the run's epochs as over the official 100
  (`schedule_epochs`): in epoch e, w_lb is scaled by 0.9^ceil(e * 100 / epochs / 10) and w_kl by
  0.5^ceil(e * 100 / epochs / 30), the official values at epoch e * 100 / epochs.
- A map of one spatial dimension (a text model's D x L stage) is reduced with the one-dimensional
  versions of the layers (Conv1d, BatchNorm1d).
- Classification only (the official NYU-Depth V2 setting, GateNet_dense and MaskNet_2d on decoder
  maps, is not built).
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.errors import UserError
from cmkd_bench.method import Method
from cmkd_bench.models.features import split_item
from cmkd_bench.models.fusion import FusionModel, model_input
from cmkd_bench.registry import METHODS


def kd_t(z_s: Tensor, z_t: Tensor, T: float) -> Tensor:
    """`distillation_loss`: KLDiv(batchmean)(log_softmax(z_s / T), softmax(z_t / T)) * T^2 (no detach)."""
    return F.kl_div(F.log_softmax(z_s.float() / T, dim=1), F.softmax(z_t.float() / T, dim=1),
                    reduction="batchmean") * T * T


def co_training_loss(logits: list[Tensor], labels: Tensor, T: float) -> Tensor:
    """Stage 1: every model's CE plus its KL towards each other model (nothing detached); for the
    official three models, loss_t + loss_s + loss_a with six KL terms."""
    total = logits[0].new_zeros(())
    for i, z in enumerate(logits):
        total = total + F.cross_entropy(z, labels)
        for j, other in enumerate(logits):
            if j != i:
                total = total + kd_t(z, other, T)
    return total


def load_balancing_loss(gate: Tensor, mode: str = "KL") -> Tensor:
    """`load_balancing_loss`: KL mode, KLDivLoss(batchmean)(log mean_b gate, uniform) (the batchmean
    of a 1-D input divides by the number of experts); CV mode, std / mean of the per-expert sums."""
    if mode == "KL":
        mean = gate.mean(dim=0)
        uniform = torch.full_like(mean, 1.0 / mean.numel())
        return F.kl_div(torch.log(mean), uniform, reduction="batchmean")
    importance = gate.sum(dim=0)
    return importance.std() / importance.mean()


def decay_factor(epoch: int, epochs: int, schedule_epochs: int, period: int, factor: float) -> float:
    """The official `w *= factor if e % period == 0` after each epoch e of `schedule_epochs`, read at
    epoch `epoch` of `epochs` (the same fraction of training): factor ** ceil(e' / period)."""
    if epochs <= 0:
        return 1.0
    official = epoch * schedule_epochs / epochs
    return factor ** math.ceil(official / period - 1e-9)


class SpatialReduction(nn.Module):
    """MaskNet_2d's reduction of a C x H x W map to C values (one-dimensional layers for C x L)."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm1d
        self.downsample = nn.Sequential(
            conv(channels, channels, kernel_size=3, stride=2, padding=1, groups=channels, bias=False),
            conv(channels, channels, kernel_size=1, bias=False), norm(channels), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(x).flatten(2).mean(dim=2)


class MaskNet(nn.Module):
    """One sigmoid mask value per channel of a layer's output (MaskNet_1d, or MaskNet_2d on a map)."""

    def __init__(self, shape: tuple[int, ...], heads: int = 3, hidden_factor: int = 2) -> None:
        super().__init__()
        channels = shape[0]
        hidden = channels // (hidden_factor * heads) * heads
        if hidden < heads:
            raise ValueError(f"mst: a layer of {channels} channels is too narrow for a MaskNet with {heads} heads and "
                             f"hidden_dim_factor {hidden_factor} (its width {channels} // ({hidden_factor} x {heads}) "
                             f"x {heads} is 0); lower mask_head_num or hidden_dim_factor")
        spatial = [s for s in shape[1:]]
        self.reduce = SpatialReduction(channels, len(spatial)) if any(s > 1 for s in spatial) else None
        self.channels, self.hidden = channels, hidden
        self.embed = nn.Linear(channels, hidden * channels)
        self.mha = nn.MultiheadAttention(embed_dim=hidden, num_heads=heads, batch_first=True)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x) if self.reduce is not None else x.flatten(1)
        tokens = self.embed(x).reshape(x.size(0), self.channels, self.hidden)
        attended, _ = self.mha(tokens, tokens, tokens)
        return torch.sigmoid(self.fc(attended).squeeze(-1))


class GateNet(nn.Module):
    """The router: Linear(C, 2C) -> Linear(2C, E) on the student's logits, no activation."""

    def __init__(self, num_classes: int, experts: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(num_classes, 2 * num_classes)
        self.fc2 = nn.Linear(2 * num_classes, experts)

    def forward(self, z: Tensor) -> Tensor:
        return self.fc2(self.fc1(z))


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    return x * mask.reshape(*mask.shape, *([1] * (x.dim() - mask.dim())))


def set_trainable(model: nn.Module) -> None:
    """Every parameter trainable but, in a fusion teacher, its encoders' own classifier heads, which
    feed nothing and stay frozen as in the teacher's training (models/fusion.py)."""
    model.requires_grad_(True)
    if isinstance(model, FusionModel):
        for encoder in model.encoders.values():
            encoder.net.get_submodule(encoder.head_module).requires_grad_(False)


def mask_points(model: nn.Module) -> list[tuple[str, nn.Module, int | None]]:
    """The layers whose outputs MaskNets mask, in forward order: (kind, module, item), kind "output"
    (a forward hook changes the module's output, item i of it for a list) or "input" (a pre-hook
    changes the module's first input). See the module docstring."""
    if isinstance(model, FusionModel):
        head = model.net["head"]
        points: list[tuple[str, nn.Module, int | None]] = [("input", head, None)]
        first = getattr(head, "fc1", None)
        if first is not None:
            points.append(("output", first, None))
        return points
    stage, item = split_item(model.stage_modules[-1])
    return [("output", model.net.get_submodule(stage), item),
            ("input", model.net.get_submodule(model.head_module), None)]


@contextmanager
def hooked(points: list[tuple[str, nn.Module, int | None]], fn) -> Iterator[None]:
    """Hooks that pass each point's tensor through fn(index, tensor) (its return replaces it)."""
    handles = []
    for index, (kind, module, item) in enumerate(points):
        if kind == "input":
            def pre(module, args, index=index):
                return (fn(index, args[0]), *args[1:])
            handles.append(module.register_forward_pre_hook(pre))
        else:
            def post(module, args, output, index=index, item=item):
                if item is None:
                    return fn(index, output)
                changed = list(output)
                changed[item] = fn(index, changed[item])
                return type(output)(changed) if isinstance(output, tuple) else changed
            handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def masked_by(points, masknets) -> Iterator[None]:
    """The model's forward with each point's output multiplied by its MaskNet's mask (hook_fn)."""
    with hooked(points, lambda index, x: _masked(x, masknets[index](x))):
        yield


@METHODS.register("mst", aliases=("mst-distill",), tasks=("classification",),
                  description="a router on the student's logits picks, per sample, one of the multimodal and "
                              "cross-modal teachers specialised by learned feature masks",
                  reference="Li et al. MST-Distill: Mixture of Specialized Teachers for Cross-Modal Knowledge "
                            "Distillation. ACM MM 2025",
                  search_space={"w_kl": [0.01, 0.1, 1.0, 10.0], "w_lb": [0.01, 0.1, 1.0, 10.0]},
                  loss_weights=("w_kl", "w_lb"))
class MSTDistill(Method):
    """loss = w_task * CE + w_kl * KD(student, top-k masked teachers) + w_lb * load balancing."""

    uses_teacher = False  # it runs its own copies of the teachers, with their masks
    multimodal_teacher_only = ("it mixes the multimodal teacher with the other modality's teacher "
                               "(MST-Distill's setting)")
    extra_teachers = ("cross",)

    def __init__(self, student, teacher, spec, w_task: float = 1.0, w_kl: float = 1.0, w_lb: float = 1.0,
                 T: float = 4.0, k: int = 1, lb_mode: str = "KL", mask_layer_num: int = 2, mask_head_num: int = 3,
                 hidden_dim_factor: int = 2, epochs_s1: int = 1, epochs_s2: int = 1, s1_lr: float = 1e-4,
                 s2_lr: float = 1e-4, cumulative_masks: bool = True, schedule_epochs: int = 100):
        super().__init__(student, teacher, spec)
        if min(w_task, w_kl, w_lb) < 0 or T <= 0 or min(s1_lr, s2_lr) <= 0:
            raise ValueError(f"need weights >= 0, T > 0 and learning rates > 0, got w_task={w_task}, w_kl={w_kl}, "
                             f"w_lb={w_lb}, T={T}, s1_lr={s1_lr}, s2_lr={s2_lr}")
        if lb_mode not in ("KL", "CV"):
            raise ValueError(f"lb_mode must be KL or CV, got {lb_mode!r}")
        if min(mask_layer_num, mask_head_num, hidden_dim_factor, k) < 1 or min(epochs_s1, epochs_s2) < 0:
            raise ValueError("need k, mask_layer_num, mask_head_num, hidden_dim_factor >= 1 and epochs_s1, epochs_s2 >= 0")
        if schedule_epochs < 1:
            raise ValueError(f"schedule_epochs must be >= 1, got {schedule_epochs}")
        self.w_task, self.w_kl, self.w_lb, self.T, self.k, self.lb_mode = w_task, w_kl, w_lb, T, k, lb_mode
        self.mask_layer_num, self.mask_head_num, self.hidden_dim_factor = mask_layer_num, mask_head_num, hidden_dim_factor
        self.epochs_s1, self.epochs_s2, self.s1_lr, self.s2_lr = epochs_s1, epochs_s2, s1_lr, s2_lr
        self.cumulative_masks, self.schedule_epochs = cumulative_masks, schedule_epochs
        self.teachers = nn.ModuleList()  # T, then each A: frozen copies, with their masks in stage 3
        self.masknets = nn.ModuleList()  # per teacher, a ModuleList of MaskNets
        self.gate: GateNet | None = None
        self.inputs: list[str] = []  # each teacher's modality (a fusion teacher: "a+b")
        self.report: dict[str, Any] = {}

    # -- stages 1 and 2 ------------------------------------------------------------------------
    def prepare(self, teacher, data, device, cache_dir) -> None:
        context = self.context
        if context is None or not isinstance(teacher, FusionModel) or not context.cross_teachers:
            raise UserError("mst needs the runner's context with a multimodal teacher and its cross-modal teachers; "
                            "run it with --teacher-modality a+b")
        student, recipe, seed = context.student, context.recipe, context.seed
        # in place: the run's models in memory (the cached files stay as they are); the engine does
        # not run the teacher (uses_teacher is False), this method does, with its masks
        models = [teacher, *context.cross_teachers.values()]
        self.inputs = [context.teacher_modality, *context.cross_teachers]
        for model in models:
            set_trainable(model)
        generator_seed = seed * 1_000_003 + 7_919
        # stage 1: co-training of the teachers and the student
        params = [p for m in (*models, student) for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.s1_lr)
        s_mod = context.student_modality
        for epoch in range(self.epochs_s1):
            for model in (*models, student):
                model.train()
            total, steps = 0.0, 0
            for batch in data.batches("train", recipe.batch_size, shuffle=True, seed=generator_seed + epoch,
                                 device=device):
                logits = [m(model_input(batch, name)).logits for m, name in zip(models, self.inputs)]
                z_s = student(model_input(batch, s_mod)).logits
                loss = co_training_loss([logits[0], z_s, *logits[1:]], batch["label"], self.T)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            self.report.setdefault("stage1_loss", []).append(total / max(steps, 1))
        for model in (*models, student):
            model.eval()
        for model in models:
            model.requires_grad_(False)
        # stage 2: a MaskNet per masked layer of each teacher, trained towards the student's predictions
        torch.manual_seed(seed + 2)
        points = [mask_points(m)[:self.mask_layer_num] for m in models]
        shapes = self._point_shapes(models, points, data, device)
        self.masknets = nn.ModuleList(
            nn.ModuleList(MaskNet(shape, self.mask_head_num, self.hidden_dim_factor) for shape in model_shapes)
            for model_shapes in shapes).to(device)
        optimizers = [[torch.optim.Adam(net.parameters(), lr=self.s2_lr) for net in nets] for nets in self.masknets]
        best, best_loss = None, float("inf")
        for epoch in range(self.epochs_s2):
            self.masknets.train()
            for batch in data.batches("train", recipe.batch_size, shuffle=True,
                                 seed=generator_seed + 10_007 + epoch, device=device):
                with torch.no_grad():
                    z_s = student(model_input(batch, s_mod)).logits
                for model, name, model_points, nets, opts in zip(models, self.inputs, points, self.masknets, optimizers):
                    for index, (net, opt) in enumerate(zip(nets, opts)):
                        with masked_by([model_points[index]], [net]):
                            z = model(model_input(batch, name)).logits
                        loss = kd_t(z, z_s.detach(), self.T)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
            self.masknets.eval()
            loss = self._stage2_validation(models, points, data, device, recipe.batch_size)
            self.report.setdefault("stage2_val_loss", []).append(loss)
            if loss < best_loss:
                best_loss, best = loss, copy.deepcopy(self.masknets.state_dict())
        if best is not None:
            self.masknets.load_state_dict(best)
        self.masknets.eval().requires_grad_(False)
        self.teachers = nn.ModuleList(models)
        self.points = points
        experts = sum(len(p) for p in points)
        if self.k > experts:
            raise UserError(f"mst: k={self.k} but the mixture has {experts} experts; use --set k=1 to {experts}")
        self.gate = GateNet(self.num_classes, experts).to(device)
        self.report["experts"] = [f"{name} masked at {i + 1}" for name, p in zip(self.inputs, points) for i in range(len(p))]

    @torch.no_grad()
    def _point_shapes(self, models, points, data, device) -> list[list[tuple[int, ...]]]:
        """Each masked layer's per-sample output shape, from one forward of a validation batch."""
        batch = next(iter(data.batches("val", 2, shuffle=False, device=device)))
        shapes = []
        for model, name, model_points in zip(models, self.inputs, points):
            found: dict[int, tuple[int, ...]] = {}

            def keep(index, x):
                found[index] = tuple(x.shape[1:])
                return x
            with hooked(model_points, keep):
                model(model_input(batch, name))
            shapes.append([found[i] for i in range(len(model_points))])
        return shapes

    @torch.no_grad()
    def _stage2_validation(self, models, points, data, device, batch_size) -> float:
        """The official selection loss: per batch, the mean over T's masks plus the mean over each
        A's, averaged over the validation batches."""
        total, count = 0.0, 0
        s_mod = self.context.student_modality
        for batch in data.batches("val", batch_size, shuffle=False, device=device):
            z_s = self.context.student(model_input(batch, s_mod)).logits
            for model, name, model_points, nets in zip(models, self.inputs, points, self.masknets):
                losses = []
                for index, net in enumerate(nets):
                    with masked_by([model_points[index]], [net]):
                        losses.append(kd_t(model(model_input(batch, name)).logits, z_s, self.T).item())
                total += sum(losses) / len(losses)
            count += 1
        return total / max(count, 1)

    # -- stage 3 -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.teachers.eval()  # frozen: BatchNorm statistics and the MaskNets' reductions stay as trained
        self.masknets.eval()
        return self

    @torch.no_grad()
    def expert_logits(self, batch: dict[str, Tensor]) -> list[Tensor]:
        """Each expert's logits: each teacher with each of its masks (accumulated, as the official
        TGroup_forward / AGroup_forward leave them; or alone with cumulative_masks=false)."""
        experts = []
        for model, name, model_points, nets in zip(self.teachers, self.inputs, self.points, self.masknets):
            x = model_input(batch, name)
            for index in range(len(nets)):
                chosen = range(index + 1) if self.cumulative_masks else (index,)
                with masked_by([model_points[i] for i in chosen], [nets[i] for i in chosen]):
                    experts.append(model(x).logits)
        return experts

    def distill(self, z_s: Tensor, experts: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(KD over the top-k experts, load balancing, the top-k indices) for student logits z_s."""
        gate = F.softmax(self.gate(z_s), dim=1)
        balance = load_balancing_loss(gate, self.lb_mode)
        stacked = torch.stack(experts, dim=1)  # B x E x C
        top = torch.topk(gate, k=self.k, dim=1).indices
        chosen = torch.gather(stacked, 1, top.unsqueeze(-1).expand(-1, -1, stacked.size(2)))
        kd = sum(kd_t(z_s, chosen[:, i].detach(), self.T) for i in range(self.k)) / self.k
        return kd, balance, top

    def forward(self, student, teacher, batch):
        if self.gate is None:
            raise RuntimeError("mst: prepare() builds the experts and the router before training")
        kd, balance, _ = self.distill(student.logits, self.expert_logits(batch))
        lb_scale = decay_factor(self.epoch, self.epochs, self.schedule_epochs, 10, 0.9)
        kl_scale = decay_factor(self.epoch, self.epochs, self.schedule_epochs, 30, 0.5)
        return {"ce": self.w_task * self.task_loss(student.logits, batch["label"]),
                "kd": self.w_kl * kl_scale * kd,
                "balance": self.w_lb * lb_scale * balance}
