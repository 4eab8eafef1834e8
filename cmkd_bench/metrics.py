"""Evaluation metrics, accumulated on the device and read once per evaluation."""

from __future__ import annotations

import torch
from torch import Tensor


class Top1:
    """Top-1 accuracy in percent."""

    name = "top1"

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str) -> None:
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.total = torch.zeros((), dtype=torch.long, device=device)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.total += labels.numel()

    def compute(self) -> float:
        return 100.0 * self.correct.item() / max(1, self.total.item())


METRICS = {"classification": Top1}


def metric_for(task: str):
    return METRICS[task]
