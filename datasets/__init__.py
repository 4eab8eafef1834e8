"""Datasets, one file each; importing this package registers them all."""

from . import mfh_gauss, paired_npz, synth_av  # noqa: F401
