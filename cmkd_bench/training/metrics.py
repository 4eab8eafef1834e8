"""Evaluation metrics, accumulated on the device and read once per evaluation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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

    def details(self) -> dict[str, Any]:
        return {}


class MeanIoU:
    """Mean intersection-over-union in percent, from a confusion matrix kept on the device.

    Pixels labelled `ignore_index` (or outside 0..C-1) are not counted. A class that is neither
    in the labels nor in the predictions has no IoU and is left out of the mean (the usual
    `nanmean`, as in mmsegmentation). Logits at another size than the labels are resized
    bilinearly first.
    """

    name = "miou"

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # one extra bin collects the ignored pixels, so updates need no boolean indexing (no host sync)
        self.counts = torch.zeros(num_classes * num_classes + 1, dtype=torch.long, device=device)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        c = self.num_classes
        predicted = logits.argmax(dim=1)
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < c)
        cells = torch.where(valid, labels.long() * c + predicted, c * c).flatten()
        self.counts.scatter_add_(0, cells, torch.ones_like(cells))

    @property
    def confusion(self) -> Tensor:
        """C x C counts: rows are the true classes, columns the predicted ones."""
        return self.counts[:-1].view(self.num_classes, self.num_classes)

    def iou(self) -> Tensor:
        """Per-class IoU in [0, 1] (float64), NaN for classes absent from labels and predictions."""
        matrix = self.confusion.double()
        intersection = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - intersection
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))

    def compute(self) -> float:
        iou = self.iou()
        present = ~torch.isnan(iou)
        return 100.0 * iou[present].mean().item() if present.any() else 0.0

    def pixel_accuracy(self) -> float:
        matrix = self.confusion
        return 100.0 * matrix.diagonal().sum().item() / max(1, matrix.sum().item())

    def details(self) -> dict[str, Any]:
        """Pixel accuracy and per-class IoU (percent; None for a class with no pixels anywhere)."""
        per_class = [None if v != v else round(100.0 * v, 4) for v in self.iou().tolist()]
        return {"pixel_acc": self.pixel_accuracy(), "per_class_iou": per_class}


METRICS = {"classification": Top1, "segmentation": MeanIoU}


def metric_for(task: str):
    return METRICS[task]
