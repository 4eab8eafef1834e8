"""Data: what a dataset declares and how its samples reach a batch (below models, methods and training).

    spec          the dataset declaration (DatasetSpec, Modality, Recipe) and the paired-data views that serve batches
    loading       persistent DataLoader workers and pooled batch buffers
    media         decoding images, audio and video; spectrograms as the papers compute them
    text          tokenisation for the text modality
    clips         the prepared-clip folder format that `prepare` writes and the loaders read
    checksums     content fingerprints and checksums.json of prepared data
    prepare       `cmkd-bench prepare`: raw release -> prepared clips
    packed        the packed store: one memory-mapped file per split
    gpu_augment   crop, resize, flip and normalisation of packed batches on the device

The package re-exports `spec`'s names: `from cmkd_bench.data import DatasetSpec` is the stable
spelling for plug-ins.
"""

from .loading import worker_limit
from .spec import (SPLITS, TASKS, OPTIMIZERS, SCHEDULES, Recipe, Modality, DatasetSpec, PairedData,
                   TensorPairs, stratified_split, SPLIT_NAMES, SampleTransform, SampleSeed, sample_seed,
                   augments, AugmentedPairs, SampleReader, SampleFailure, DecodedPairs)

__all__ = ["SPLITS", "TASKS", "OPTIMIZERS", "SCHEDULES", "Recipe", "Modality", "DatasetSpec",
           "PairedData", "TensorPairs", "stratified_split", "SPLIT_NAMES", "SampleTransform",
           "SampleSeed", "sample_seed", "augments", "AugmentedPairs", "SampleReader", "SampleFailure",
           "worker_limit", "DecodedPairs"]
