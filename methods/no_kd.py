"""The baseline row: the student trained with its task loss alone."""

from __future__ import annotations

from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


@METHODS.register("no-kd", aliases=("none", "baseline"), tasks=("classification", "segmentation"),
                  description="student trained with cross-entropy only (the baseline row)")
class NoKD(Method):
    uses_teacher = False

    def forward(self, student, teacher, batch):
        return {"ce": self.task_loss(student.logits, batch["label"])}
