"""Training steps/s of backbones side by side (default: small-cnn and small-resnet on synth-av).

    python benchmarks/backbone_cost.py [--dataset synth-av] [--backbones small-cnn,small-resnet]
                                       [--steps 30] [--repeats 3] [--device cpu]

One no-kd training step (forward, cross-entropy, backward, the recipe's optimiser) on each of the
dataset's two modalities with its default batch size; --repeats rounds in interleaved order, the
median steps/s per backbone and modality, so a slow moment of the machine does not land on one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cmkd_bench.catalog import load_all
from cmkd_bench.recipes import autocast, build_optimizer
from cmkd_bench.registry import DATASETS
from cmkd_bench.training.engine import resolve_device
from cmkd_bench.training.runner import build_model


def steps_per_second(backbone: str, data, modality: str, device: torch.device, steps: int, warmup: int = 3) -> float:
    model = build_model(backbone, data, modality, 0, device)
    optimizer = build_optimizer(list(model.parameters()), data.spec.recipe)
    batches = list(data.batches("train", data.spec.recipe.batch_size, shuffle=True, seed=0, device=device))
    began = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
        batch = batches[step % len(batches)]
        with autocast(device):
            loss = F.cross_entropy(model(batch[modality]).logits.float(), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synth-av")
    parser.add_argument("--backbones", default="small-cnn,small-resnet")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    load_all()
    device = resolve_device(args.device)
    data = DATASETS.build(DATASETS.canonical(args.dataset), None)
    backbones, modalities = args.backbones.split(","), list(data.spec.modalities)
    rates: dict[tuple[str, str], list[float]] = {(b, m): [] for b in backbones for m in modalities}
    for _ in range(args.repeats):
        for key in rates:
            rates[key].append(steps_per_second(key[0], data, key[1], device, args.steps))
    params = {b: sum(p.numel() for p in build_model(b, data, modalities[0], 0, device).parameters()) for b in backbones}
    print(f"Backbone cost on {data.spec.name} ({device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {data.spec.recipe.batch_size}, median of {args.repeats} x {args.steps} steps)")
    print(f"| backbone | parameters ({modalities[0]}) | " + " | ".join(f"{m} steps/s" for m in modalities)
          + f" | relative to {backbones[0]} |")
    base = statistics.median(r for m in modalities for r in rates[(backbones[0], m)])
    for b in backbones:
        medians = [statistics.median(rates[(b, m)]) for m in modalities]
        overall = statistics.median(r for m in modalities for r in rates[(b, m)])
        print(f"| {b} | {params[b]:,} | " + " | ".join(f"{v:.1f}" for v in medians) + f" | {overall / base:.2f} |")


if __name__ == "__main__":
    main()
