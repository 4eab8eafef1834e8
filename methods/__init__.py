"""Distillation methods, one file each; importing this package registers them all.

No method module imports another (tests/test_layering.py): what several share is in
cmkd_bench/losses.py. A file of presets (`METHODS.register_preset`) needs its base registered,
so preset files are imported here after every method they derive from.
"""

from . import at, c2kd, crd, ctkd, dist, dkd, fd, fitnet, kd, mgdfr, mgdfr_ridge, mlld, mst, no_kd, ofa, pkd, rkd  # noqa: F401
from . import cwd  # noqa: F401  (segmentation)
from . import fd_presets, fd_random_split  # noqa: F401  (presets of fd: after it)
