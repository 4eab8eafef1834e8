"""Datasets, one file each; importing this package registers them all."""

from . import av_mnist, ave, crema_d, mfh_gauss, paired_manifest, paired_npz, ravdess, synth_av, vggsound_50  # noqa: F401
from . import crisismmd, synth_it  # noqa: F401  (image-text)
from . import nyuv2, synth_rgbd  # noqa: F401  (segmentation)
