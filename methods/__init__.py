"""Distillation methods, one file each; importing this package registers them all."""

from . import at, c2kd, crd, dist, dkd, fd, fd_presets, fitnet, kd, mgdfr, mgdfr_ridge, no_kd, pkd, rkd  # noqa: F401
from . import cwd  # noqa: F401  (segmentation)
