"""`fd-random-split`: FD-CMKD with its DFT band split replaced by a fixed, seeded random orthonormal
split of the same sizes (methods/fd.py, `basis="random"`): is it the frequency, or just two subspaces?

The two subspaces have the real dimensions of fd's low and high bands (cmkd_bench.losses:
fourier_band_dims, random_subspace_bases); the feature, scale normalisation, low-band MSE,
high-band logMSE, shared and task heads and every weight are fd's defaults. The basis is fixed
by `basis_seed` (0), the same for every run and seed, so runs differ only as fd's runs do.
The search space is fd's (w_low x w_high). The reference code has no such control.
"""

from __future__ import annotations

from cmkd_bench.registry import METHODS  # `fd` is registered first: methods/__init__.py imports presets last

METHODS.register_preset("fd-random-split", "fd", basis="random",
                        description="FD-CMKD control: the DFT band split replaced by a seeded random orthonormal "
                                    "split into subspaces of the same sizes")
