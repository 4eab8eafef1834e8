"""`fd-random-split`: FD-CMKD with its DFT band split replaced by a fixed, seeded random orthonormal
split of the same sizes: is it the frequency, or just two subspaces with different losses?

The two subspaces split the mean-free subspace (the DFT bands drop the DC too) into the real
dimensions of fd's low and high bands: 2 x cut and D - 1 - 2 x cut (cmkd_bench.losses:
fourier_band_dims, random_subspace_bases); each band is the orthogonal projection onto its
subspace, so the two sum to the mean-free feature, as fd's do. The feature, scale normalisation,
low-band MSE, high-band logMSE, shared and task heads and every weight are fd's defaults, and
stay settable like fd's. The basis is fixed by `basis_seed` (0), the same in every run and seed,
so runs differ only as fd's do. The search space is fd's. The reference code has no such control.

It derives from the registered `fd` (as the presets in fd_presets.py do, without importing
methods/fd.py): fd builds the method, `use_band_bases` swaps the split. fd's own hyper-parameters
are untouched, so fd's run ids stay as they were.
"""

from __future__ import annotations

from cmkd_bench.losses import fourier_band_dims, random_subspace_bases
from cmkd_bench.registry import METHODS, Entry

FD = METHODS.get("fd")  # registered first: methods/__init__.py imports derived methods last


def fd_random_split(student, teacher, spec, basis_seed: int = 0, **fd_hparams):
    method = FD.factory(student, teacher, spec, **fd_hparams)
    if method.freq_split:  # with freq_split=False (fd-no-freq's setting) there is no split to replace
        method.use_band_bases(*random_subspace_bases(method.dim, fourier_band_dims(method.dim, method.cut)[0],
                                                     basis_seed))
    return method


METHODS.add(Entry(name="fd-random-split", factory=fd_random_split, tasks=FD.tasks, reference=FD.reference,
                  description="FD-CMKD control: the DFT band split replaced by a seeded random orthonormal split "
                              "into subspaces of the same sizes",
                  hparams={**FD.hparams, "basis_seed": 0}, hparam_types={**FD.hparam_types, "basis_seed": int},
                  meta={**FD.meta, "preset_of": FD.name}))
