"""Distillation methods, one file each; importing this package registers them all."""

from . import fd, fitnet, kd, no_kd  # noqa: F401
