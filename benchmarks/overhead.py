"""Engine overhead: cmkd-bench's training loop against a bare PyTorch loop doing the same work.

Same data (synth-av in memory), same models (the raw networks, without the feature hooks), same
KD loss, same optimizer and schedule, same batches. The bare loop is what one would write by
hand; the engine adds hooks, loss bookkeeping, the non-finite check, per-epoch validation and
checkpoints. Both sides validate every epoch; only the engine writes checkpoints.

    python benchmarks/overhead.py [--epochs 3] [--repeats 3] [--method kd] [--device cpu]

Prints training steps/s of each (median of the repeats, alternating the two) and their ratio.
Target on CPU: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cmkd_bench.catalog import load_all
from cmkd_bench.data.spec import Recipe
from cmkd_bench.recipes import lr_factor
from cmkd_bench.registry import DATASETS, METHODS
from cmkd_bench.training.engine import Fit, evaluate, resolve_device
from cmkd_bench.training.runner import build_model


def setup(device: torch.device, seed: int = 0):
    data = DATASETS.build("synth-av", None)
    spec = data.spec
    teacher = build_model("small-cnn", data, "visual", seed, device).eval()
    student = build_model("small-cnn", data, "audio", seed, device)
    return data, teacher, student


def bare_loop(data, teacher, student, recipe: Recipe, seed: int, device: torch.device) -> tuple[int, float, float]:
    """The hand-written loop: returns (steps, seconds in training, seconds in total)."""
    train = {k: v.to(device) for k, v in data.splits["train"].items()}
    net_s, net_t = student.net, teacher.net
    optimizer = torch.optim.SGD(net_s.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    n, bs = len(train["label"]), recipe.batch_size
    steps_per_epoch = n // bs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(recipe, s, steps_per_epoch))
    T, alpha = 4.0, 0.5
    steps, train_seconds, began = 0, 0.0, time.perf_counter()
    for epoch in range(recipe.epochs):
        net_s.train()
        epoch_began = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(device)
        for b in range(steps_per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            x_s, x_t, y = train["audio"][idx], train["visual"][idx], train["label"][idx]
            with torch.no_grad():
                logits_t = net_t(x_t)
            logits_s = net_s(x_s)
            kl = F.kl_div(F.log_softmax(logits_s / T, 1), F.log_softmax(logits_t / T, 1), reduction="batchmean", log_target=True)
            loss = (1 - alpha) * F.cross_entropy(logits_s, y) + alpha * T * T * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
        train_seconds += time.perf_counter() - epoch_began
        evaluate(student, data, "val", "audio", device)
    return steps, train_seconds, time.perf_counter() - began


def engine_loop(data, teacher, student, recipe: Recipe, seed: int, device: torch.device, method: str) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        objective = METHODS.build(method, student.info, teacher.info, data.spec).to(device)
        began = time.perf_counter()
        result = Fit(student=student, method=objective, data=data, student_modality="audio", recipe=recipe, seed=seed,
                     device=device, checkpoint=Path(tmp) / "checkpoint.pt", teacher=teacher, teacher_modality="visual").run()
        return result.train_steps, result.train_seconds, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="kd", help="the engine's method; the bare loop always computes KD")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    load_all()
    device = resolve_device(args.device)
    data, teacher, _ = setup(device)
    recipe = data.spec.recipe.updated(epochs=args.epochs)
    rows = {"bare": [], "engine": []}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name in ("bare", "engine"):
            _, _, student = setup(device)
            loop = bare_loop if name == "bare" else (lambda *a: engine_loop(*a, method=args.method))
            steps, train_s, total_s = loop(data, teacher, student, recipe, 0, device)
            if repeat:
                rows[name].append((steps / train_s, steps / total_s))
    print(f"device {device} · torch {torch.__version__} · {torch.get_num_threads()} threads · synth-av · small-cnn "
          f"· batch {recipe.batch_size} · {args.epochs} epochs x {args.repeats} repeats (median)")
    medians = {name: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for name, v in rows.items()}
    print(f"{'loop':<8} {'train steps/s':>14} {'steps/s incl. val+ckpt':>24}")
    for name, (train_rate, total_rate) in medians.items():
        print(f"{name:<8} {train_rate:>14.2f} {total_rate:>24.2f}")
    print(f"ratio engine/bare: training {medians['engine'][0] / medians['bare'][0]:.3f}, "
          f"including validation and checkpoints {medians['engine'][1] / medians['bare'][1]:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
