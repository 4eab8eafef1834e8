"""How a recipe trains parameters: its optimiser, its per-step learning-rate factor, and the run's precision.

One place for what the engine does with a `Recipe` and what a method that trains a model of its
own (mgdfr's partner) must do the same way, so that both follow the dataset's recipe exactly.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .data.spec import Recipe


def build_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over parameters or parameter groups (a group's own settings override the recipe's)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Per-step learning-rate multiplier: linear warm-up, then cosine, poly (0.9) or constant."""
    total = recipe.epochs * steps_per_epoch
    warmup = recipe.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.schedule == "poly":
        return (1.0 - progress) ** 0.9
    return 1.0


def autocast(device: torch.device):
    """The run's precision: bf16 autocast on CUDA, full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
