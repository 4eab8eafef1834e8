"""mfh-gauss: the synthetic Gaussian setting of the Modality Focusing Hypothesis (Xue et al., ICLR 2023, Exp. 1).

A decisive latent xs ~ N(0, I_20) sets the label y = [xs . a > 0] for a fixed random direction a.
The student modality x2 (50 dims) carries xs[:, 0:10]; the teacher modality x1 (25 dims) carries
xs[:, 10-o : 20-o], so `overlap` o (0..10) is how many decisive dims the two modalities share.
All other dims are N(0, 1) noise. The paper trains linear models with full-batch gradient descent
(lr 0.1, 1000 epochs) and KD at temperature 1: that is this dataset's recipe, and
`--method kd --set T=1` gives its KD.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmkd_bench.data import DatasetSpec, Modality, Recipe, TensorPairs
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

LATENT, STUDENT_DIMS, TEACHER_DIMS, CARRIED = 20, 50, 25, 10


@DATASETS.register("mfh-gauss", reads_data_root=False, tasks=("classification",),
                   description="MFH synthetic Gaussian setting: decisive latent shared by `overlap` dims across modalities")
def mfh_gauss(data_root: Path | None, overlap: int = 5, train: int = 200, val: int = 500, test: int = 1000,
              data_seed: int = 0) -> TensorPairs:
    if not 0 <= overlap <= CARRIED:
        raise UserError(f"mfh-gauss option overlap must be in 0..{CARRIED}, got {overlap}")
    if min(train, val, test) < 1:
        raise UserError("mfh-gauss needs at least one sample in every split")
    g = torch.Generator().manual_seed(data_seed)
    direction = torch.randn(LATENT, generator=g)
    splits = {}
    for split, n in (("train", train), ("val", val), ("test", test)):
        xs = torch.randn(n, LATENT, generator=g)
        x2 = torch.randn(n, STUDENT_DIMS, generator=g)
        x2[:, :CARRIED] = xs[:, :CARRIED]
        x1 = torch.randn(n, TEACHER_DIMS, generator=g)
        x1[:, :CARRIED] = xs[:, CARRIED - overlap: 2 * CARRIED - overlap]
        splits[split] = {"x1": x1, "x2": x2, "label": (xs @ direction > 0).long()}
    spec = DatasetSpec(
        name="mfh-gauss", task="classification", num_classes=2,
        modalities={"x1": Modality((TEACHER_DIMS,), "linear", "teacher modality: xs[10-o:20-o] + 15 noise dims"),
                    "x2": Modality((STUDENT_DIMS,), "linear", "student modality: xs[0:10] + 40 noise dims")},
        teacher_modality="x1", student_modality="x2",
        recipe=Recipe(epochs=1000, batch_size=train, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                      schedule="constant"),
        split_sizes={"train": train, "val": val, "test": test},
        recipe_source="Xue et al., The Modality Focusing Hypothesis, ICLR 2023, Sec. 3 (full-batch GD, lr 0.1, 1000 epochs)",
        options={"overlap": overlap, "train": train, "val": val, "test": test, "data_seed": data_seed},
    )
    return TensorPairs(spec, splits)
