#!/usr/bin/env bash
# Everything the first call on a GPU machine runs, in under 9 minutes with the install, logged as it goes.
#
#   bash benchmarks/first_gpu.sh                   on the GPU machine, from the repository root (carry .whl/)
#   bash benchmarks/first_gpu.sh --small           end to end on CPU at small sizes (or FIRST_GPU_SMALL=1)
#   bash benchmarks/first_gpu.sh --install-only    the install step alone
#
# The log is $OUT/first-gpu.log where OUT is set (the device machine's folder that comes back), else
# first-gpu-out/first-gpu.log. Each step is guarded (a time-out of its own, capped by what is left of
# FIRST_GPU_BUDGET_S, default 510 s): one that fails is one line in the summary and the next step runs.
# Steps: the environment (nvidia-smi, versions, /dev/shm); the install (`pip install --no-deps
# --no-build-isolation -e .`, or, where the machine's setuptools is older than pyproject's 77, a path
# finder in site-packages doing the same mapping; then the wheels in .whl/, from `make gpu-wheels`,
# of the packages the machine lacks, never a downgrade); the gpu-marked tests; every method one epoch
# on synth-av and synth-rgbd; torchrun with 2 processes (gloo on CPU: NCCL needs a GPU per process,
# and distributed.start maps rank N to cuda:N); on CUDA also 1 process on the GPU (NCCL) and the
# one-line refusal of 2 processes on one GPU; then benchmarks/gpu_check.py with the time left.
# Without CUDA the CUDA-only steps print "skipped: no CUDA". Nothing is downloaded at run time.
# PYTHON: the interpreter (default .venv/bin/python where it exists, else python3).
# FIRST_GPU_INSTALL=finder: the fallback install even where pip could do it (to check the fallback).
# Exit code 0 when no step failed, 1 when one did, 2 for a bad argument.

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

SMALL=${FIRST_GPU_SMALL:-0}
INSTALL_ONLY=0
for arg in "$@"; do
    case $arg in
        --small) SMALL=1 ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "first_gpu.sh: error: unknown argument '$arg' (use --small, --install-only or --help)" >&2; exit 2 ;;
    esac
done
case $SMALL in 0|1) ;; *) echo "first_gpu.sh: error: FIRST_GPU_SMALL must be 0 or 1, got '$SMALL'" >&2; exit 2 ;; esac
BUDGET_S=${FIRST_GPU_BUDGET_S:-510}
if ! [[ $BUDGET_S =~ ^[0-9]+$ ]] || (( BUDGET_S < 60 )); then
    echo "first_gpu.sh: error: FIRST_GPU_BUDGET_S must be a whole number of seconds, at least 60; got '$BUDGET_S'" >&2
    exit 2
fi
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! command -v "$PYTHON" >/dev/null; then
    echo "first_gpu.sh: error: no python at '$PYTHON'; set PYTHON to the interpreter that has torch" >&2
    exit 2
fi

LOG_DIR=${OUT:-first-gpu-out}
mkdir -p "$LOG_DIR" || exit 2
LOG=$LOG_DIR/first-gpu.log
exec > >(tee -a "$LOG") 2>&1
TEE=$!
export PYTHONUNBUFFERED=1
STARTED=$(date +%s)
DEADLINE=$(( STARTED + BUDGET_S ))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/first-gpu.XXXXXX")
finish() {  # the scratch folder goes; the log is whole before the script returns
    rm -rf "$WORK"
    exec >&- 2>&-
    wait "$TEE" 2>/dev/null
}
trap finish EXIT
SUMMARY=()
FAILED=0

note() {  # note STEP RESULT: one line of the summary, printed now too
    SUMMARY+=("$(printf '%-34s %s' "$1" "$2")")
    echo "-- $1: $2"
    case $2 in FAILED*|TIMED*) FAILED=$(( FAILED + 1 )) ;; esac
}

left() { echo $(( DEADLINE - $(date +%s) )); }

within() {  # within CAP_S: CAP_S, or less where less is left (at least 1)
    local rest=$(( $(left) - 20 ))
    (( rest < $1 )) || rest=$1
    echo $(( rest < 1 ? 1 : rest ))
}

step() {  # step NAME CAP_S COMMAND...: COMMAND with a time-out of CAP_S or what is left, whichever is less
    local name=$1 cap=$2 rest limit began rc
    shift 2
    rest=$(left)
    if (( rest < 15 )); then note "$name" "skipped: budget spent"; return 1; fi
    limit=$(( cap < rest ? cap : rest ))
    echo
    echo "== $name (time-out ${limit} s): $*"
    began=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    if (( rc == 0 )); then note "$name" "ok, $(( $(date +%s) - began )) s"
    elif (( rc == 124 || rc == 137 )); then note "$name" "TIMED OUT after $(( $(date +%s) - began )) s"
    else note "$name" "FAILED: exit $rc after $(( $(date +%s) - began )) s"; fi
    return "$rc"
}

refused() {  # refused NAME CAP_S PATTERN COMMAND...: COMMAND must fail with PATTERN in its output
    local name=$1 cap=$2 pattern=$3 rest rc
    shift 3
    rest=$(left)
    if (( rest < 15 )); then note "$name" "skipped: budget spent"; return; fi
    echo
    echo "== $name (must fail, naming: $pattern): $*"
    timeout -k 10 "$(( cap < rest ? cap : rest ))" "$@" >"$WORK/refused.txt" 2>&1
    rc=$?
    tail -n 5 "$WORK/refused.txt"
    if (( rc != 0 )) && grep -q -- "$pattern" "$WORK/refused.txt"; then note "$name" "ok: refused (exit $rc)"
    else note "$name" "FAILED: exit $rc without '$pattern'"; fi
}

environment() {
    echo "== environment, $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -srm), $(nproc) cores"
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    df -h /dev/shm 2>&1 | tail -n 1 | awk '{print "/dev/shm: " $2 " (" $4 " free)"}'
    free -g 2>/dev/null | sed -n 2p
    "$PYTHON" - <<'EOF'
import sys
from importlib import metadata
print("python", sys.version.split()[0], sys.executable)
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.device_count()} device(s)" + (f": {torch.cuda.get_device_name(0)}" if cuda else ""))
except Exception as error:  # noqa: BLE001 - the environment report goes on
    print("torch: cannot import:", error)
for name in ("torchvision", "timm", "numpy", "setuptools", "pip", "rich", "click", "scipy", "scikit-learn", "h5py",
             "matplotlib", "pillow", "pyyaml", "opencv-python-headless", "typing_extensions", "huggingface-hub",
             "safetensors", "segmentation-models-pytorch", "albumentations", "pydantic", "av", "submitit", "transformers"):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = "absent"
    print(f"  {name} {version}")
EOF
}

from_this_tree() {  # whether cmkd_bench.methods imports from this tree (an editable install or the fallback)
    "$PYTHON" -c "
import importlib.util, pathlib, sys
spec = importlib.util.find_spec('cmkd_bench.methods')
sys.exit(0 if spec and spec.origin and pathlib.Path(spec.origin).resolve() == pathlib.Path('methods/__init__.py').resolve() else 1)
" 2>/dev/null
}

source_finder() {  # the fallback: setuptools' package-dir mapping (pyproject.toml) as a finder that a .pth loads
    "$PYTHON" - "$PWD" <<'EOF'
import sys
import sysconfig
from pathlib import Path

root, site = Path(sys.argv[1]).resolve(), Path(sysconfig.get_paths()["purelib"])
(site / "_cmkd_bench_source.py").write_text(f'''"""cmkd-bench imported from its source tree {root} (written by benchmarks/first_gpu.sh where
pip could not install it editable): pyproject's package-dir mapping, as setuptools' editable finder does it."""
import importlib.abc
import importlib.util
import sys
from pathlib import Path

ROOT = Path({str(root)!r})
PACKAGES = {{"cmkd_bench": ROOT / "cmkd_bench", "cmkd_bench.methods": ROOT / "methods", "cmkd_bench.datasets": ROOT / "datasets"}}


class SourceTree(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        folder = PACKAGES.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])


if not any(type(finder).__name__ == "SourceTree" for finder in sys.meta_path):
    sys.meta_path.insert(0, SourceTree())
''')
(site / "_cmkd_bench_source.pth").write_text("import _cmkd_bench_source\n")
print(f"wrote {site / '_cmkd_bench_source.pth'} and _cmkd_bench_source.py (remove both to undo)")
EOF
}

install_project() {
    echo
    echo "== install ($PYTHON)"
    local setuptools
    if from_this_tree; then
        echo "cmkd_bench already imports from this tree: nothing to install"
    else
        setuptools=$("$PYTHON" -c "import setuptools; print(setuptools.__version__)" 2>/dev/null || echo none)
        if [[ ${FIRST_GPU_INSTALL:-} == finder ]]; then
            echo "FIRST_GPU_INSTALL=finder: no pip install"
        elif [[ $setuptools != none ]] && "$PYTHON" -c "import sys; sys.exit(int('$setuptools'.split('.')[0]) < 77)"; then
            "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . || echo "pip's editable install failed"
        elif [[ $setuptools == none ]]; then
            echo "no setuptools here: no pip install"
        else
            echo "setuptools $setuptools is older than the 77 pyproject's SPDX license needs: no pip install"
        fi
        if ! from_this_tree; then
            echo "falling back to a path finder in site-packages"
            source_finder
        fi
    fi
    if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
        local wheels
        # each wheel whose distribution is absent here or older than the wheel; never a downgrade
        wheels=$("$PYTHON" - .whl/*.whl <<'EOF' || echo "cannot-read-versions"
import re
import sys
from importlib import metadata


def numbers(version):
    return tuple(int(part) for part in re.findall(r"\d+", version)[:4])


for path in sys.argv[1:]:
    name, version = path.rsplit("/", 1)[-1].split("-")[:2]
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(path)
        continue
    if numbers(have) < numbers(version):
        print(path)
EOF
)
        if [[ $wheels == *cannot-read-versions* ]]; then
            echo "could not read the installed versions with $PYTHON"
            return 1
        elif [[ -n $wheels ]]; then
            echo "installing from .whl/: $(echo $wheels | xargs -n1 basename | tr '\n' ' ')"
            # shellcheck disable=SC2086
            "$PYTHON" -m pip install -q --no-index --no-deps --find-links .whl $wheels || return 1
        else
            echo ".whl/: every package there is already installed at that version or newer"
        fi
    else
        echo "no wheels in .whl/ (make gpu-wheels): packages this machine lacks stay missing"
    fi
    from_this_tree && "$PYTHON" -c "import cmkd_bench.methods, cmkd_bench.datasets; print('cmkd_bench imports from', cmkd_bench.__path__[0])"
}

echo "first_gpu.sh: $(if (( SMALL )); then echo small sizes; else echo full; fi), budget ${BUDGET_S} s, log $LOG"
if (( INSTALL_ONLY )); then
    install_project
    exit $?
fi
environment
if install_project; then note "install" "ok, $(( $(date +%s) - STARTED )) s since the start"
else note "install" "FAILED (see above)"; fi

CUDA=0
"$PYTHON" -c "import torch; raise SystemExit(0 if torch.cuda.is_available() and (torch.ones(1, device='cuda') + 1).item() == 2 else 1)" \
    2>/dev/null && CUDA=1
DEVICE=$(if (( CUDA )); then echo cuda; else echo cpu; fi)
SIZE_ARGS=()
(( SMALL || ! CUDA )) && SIZE_ARGS=(--small)
TINY=(--set train=64 --set val=32 --set test=32 --set image_size=16)
DDP_DATA=(--set train=256 --set val=64 --set test=64)
(( SMALL )) && DDP_DATA=("${TINY[@]}")

if (( CUDA )); then
    step "gpu-marked tests" 150 env CMKD_BENCH_TEST_CUDA=1 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests
else
    note "gpu-marked tests" "skipped: no CUDA"
fi

METHODS_S=$(( SMALL ? 240 : 180 ))
step "every method, 1 epoch, $DEVICE" "$(( METHODS_S + 20 ))" \
    "$PYTHON" benchmarks/gpu_check.py --stages methods --device "$DEVICE" "${SIZE_ARGS[@]}" --budget-s "$(within "$METHODS_S")"

RUN=(-m cmkd_bench run --method kd --dataset synth-av --epochs 1 --teacher-epochs 1 --quiet --force)
step "torchrun 2 processes, gloo, cpu" 120 \
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 "${RUN[@]}" --device cpu \
    --out "$WORK/ddp-cpu" "${DDP_DATA[@]}"
if (( CUDA )); then
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    if (( GPUS >= 2 )); then
        step "torchrun 2 processes, nccl, cuda" 90 \
            "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 "${RUN[@]}" --device cuda \
            --out "$WORK/ddp-cuda" "${DDP_DATA[@]}"
    else
        step "torchrun 1 process, nccl, cuda" 90 \
            "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 "${RUN[@]}" --device cuda \
            --out "$WORK/ddp-cuda" "${DDP_DATA[@]}"
        refused "torchrun 2 processes on 1 GPU" 60 "at most the GPU count" \
            "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 "${RUN[@]}" --device cuda \
            --out "$WORK/ddp-refused" "${TINY[@]}"
    fi
else
    note "torchrun on cuda (nccl)" "skipped: no CUDA"
fi

REST=$(( $(left) - 15 ))
if (( REST >= 30 )); then
    step "gpu_check" "$(( REST + 10 ))" "$PYTHON" benchmarks/gpu_check.py --skip-tests --device "$DEVICE" \
        "${SIZE_ARGS[@]}" --budget-s "$REST"
else
    note "gpu_check" "skipped: budget spent ($REST s left)"
fi

echo
echo "== summary: $(( $(date +%s) - STARTED )) s of a ${BUDGET_S} s budget, ${FAILED} step(s) failed"
printf '%s\n' "${SUMMARY[@]}"
exit $(( FAILED > 0 ))
