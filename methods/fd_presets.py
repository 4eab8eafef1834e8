"""FD-CMKD ablations as presets of `fd`: each switches off one component, all else at fd's defaults.

`fd-no-freq` aligns the whole feature with MSE, less its DC component (its mean over the feature
dimension), which fd's DFT bands leave out too (bins 1..D//2 only): the ablation changes one thing,
the split, and keeps what fd discards discarded.

`fd-no-log` (alias `fd-mse-both`) replaces the high band's logMSE by plain MSE: "no log" and
"MSE on both bands" are the same setting, so one preset carries both names.

`fd-high-downweight` asks whether logMSE is more than a smaller weight on the high band: it uses
plain MSE with w_high set to the average ratio logMSE / MSE that fd's own high-band inputs give.
Those inputs are L2-normalised (scale_norm), so each element is about 1 / sqrt(D) in size, where
signed_log(x) = x - x|x|/2 + ... is nearly linear: the ratio is about 1 - 2 E|x| ~ 1 - 1.6 / sqrt(D).
Measured on the high band of random small-cnn features on synth-av (and on Gaussian features):
0.84 at D = 64 (small-cnn's default width; 0.83 on the post-activation feature, fd's default,
0.84 on the pre-activation one), 0.88 at D = 128, 0.93 at D = 512. The preset uses 0.85; set
w_high yourself for wide backbones (about 0.93 for ResNet-18's 512).

The presets inherit fd's search space (w_low x w_high); the tuner drops the keys a preset fixes.
The two presets that fix fd's tuned keys declare spaces of the weights they keep, so that every
ablation spends the same budget: fd-no-align tunes its heads' weights (w_shared x w_task, each in
{0.01, 0.1, 1, 10}), fd-high-downweight tunes w_low over eight half-decade steps.
fd itself is checked against the reference code in methods/fd.py's docstring; that code has
no switches for these ablations, each preset turns off one component of fd's loss.
"""

from __future__ import annotations

from cmkd_bench.registry import METHODS  # `fd` is registered first: methods/__init__.py imports presets last

HIGH_BAND_LOG_TO_MSE = 0.85

METHODS.register_preset("fd-no-freq", "fd", freq_split=False,
                        description="FD-CMKD ablation: no frequency split (the whole feature, DC dropped as in fd, "
                                    "aligned with MSE)")
# On segmentation fd has no shared heads, so these two would repeat no-kd and fd: classification only.
METHODS.register_preset("fd-no-align", "fd", w_low=0.0, w_high=0.0, tasks=("classification",),
                        search_space={"w_shared": [0.01, 0.1, 1.0, 10.0], "w_task": [0.01, 0.1, 1.0, 10.0]},
                        loss_weights=("w_shared", "w_task"),
                        description="FD-CMKD ablation: no feature alignment (shared and task heads only)")
METHODS.register_preset("fd-no-scale", "fd", scale_norm=False,
                        description="FD-CMKD ablation: no scale normalisation before alignment")
METHODS.register_preset("fd-no-log", "fd", aliases=("fd-mse-both",), log_high=False,
                        description="FD-CMKD ablation: plain MSE on the high band too (no logMSE)")
METHODS.register_preset("fd-no-shared", "fd", shared_heads=False, tasks=("classification",),
                        description="FD-CMKD ablation: no shared classifier heads")
METHODS.register_preset("fd-high-downweight", "fd", log_high=False, w_high=HIGH_BAND_LOG_TO_MSE,
                        search_space={"w_low": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]}, loss_weights=("w_low",),
                        description="FD-CMKD ablation: high band MSE down-weighted to logMSE's average scale "
                                    f"(w_high={HIGH_BAND_LOG_TO_MSE}), instead of logMSE")
