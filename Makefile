# Two commands do all set-up on a fresh machine with python3 and make:
#   make demo   create .venv, install, run no-kd / kd / fitnet / fd on synth-av, print the table
#   make test   create .venv, install with test extras, run the CI test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
DEMO_METHODS ?= no-kd kd fitnet fd

.PHONY: demo test test-slow bench gpu-check gpu-wheels test-compat leaderboard docs clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Installed with the pinned versions the leaderboard is made with (constraints.txt); the extras
# (tensorboard, wandb) are not pinned and never installed here.
$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	@for method in $(DEMO_METHODS); do \
		$(BIN)/cmkd-bench run --method $$method --dataset synth-av --out $(DEMO_OUT) --quiet || exit 1; \
	done
	$(BIN)/cmkd-bench leaderboard $(DEMO_OUT)

# Tests run on TEST_WORKERS processes (pytest-xdist): 8 min 36 s on 2 cores (measured 2026-12-07; one at a time took 22 min before the suite grew).
TEST_WORKERS ?= 2

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# Heavier checks that CI skips (minutes of CPU): full-size runs.
test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m slow

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/overhead.py

# One short call on a GPU machine (installs nothing): the gpu-marked tests and one table of figures
# (benchmarks/gpu_check.py; small sizes without CUDA). Uses .venv where there is one, else the
# machine's python3 with the project installed there (`pip install --no-deps --no-build-isolation -e .`,
# what benchmarks/first_gpu.sh does on a GPU image that cannot build a venv). GPU_CHECK_ARGS: e.g. --budget-s 240.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# The .whl/ folder benchmarks/first_gpu.sh installs from on a GPU image without network: the packages
# that image lacks, at constraints.txt's versions, for CPython 3.12 on manylinux x86_64 (never imported
# here). About 42 MiB, 34 of them PyAV (only `prepare` decodes video): the device machine takes 64 MiB
# with the tree. typing_extensions: pydantic 2.14 needs >= 4.16 (first_gpu.sh never downgrades one).
GPU_WHEELS ?= segmentation_models_pytorch albumentations albucore pydantic pydantic_core annotated-types \
	typing-inspection typing_extensions simsimd stringzilla av
gpu-wheels:
	mkdir -p .whl
	for name in $(GPU_WHEELS); do \
		pin=$$(grep -i -E "^$$name==" constraints.txt) || { echo "gpu-wheels: $$name is not pinned in constraints.txt" >&2; exit 2; }; \
		$(PYTHON) -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
			--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
			-d .whl "$$pin" || exit 1; \
	done
	@du -sh .whl

# The lower bounds pyproject claims (torch, torchvision, timm): a second venv with the GPU image's
# torch 2.11 / torchvision 0.26 (the PyPI build, CUDA, several GB; runs on CPU) and the rest at
# constraints.txt's pins, running the distributed (gloo), loader, engine and method tests on CPU.
# Not part of `make test`: 5.5 GB, about 5 minutes to build and 6 to test on 2 cores. build/ is git-ignored.
COMPAT_VENV ?= build/venv-compat
# Python 3.12 where it runs (the GPU image's), else $(PYTHON).
COMPAT_PYTHON ?= $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || echo $(PYTHON))
COMPAT_PINS ?= torch==2.11.0 torchvision==0.26.0 timm==1.0.31
COMPAT_TESTS ?= tests/test_distributed.py tests/test_packed.py tests/test_engine.py tests/test_methods_zoo.py \
	tests/test_losses.py tests/test_fidelity_cmkd.py tests/test_fidelity_logit_feature.py \
	tests/test_fidelity_relational_fd.py
$(COMPAT_VENV)/.installed: pyproject.toml constraints.txt
	$(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	grep -v -i -E '^(torch|torchvision|timm|triton|nvidia-|cuda-)' constraints.txt > $(COMPAT_VENV)/constraints.txt
	$(COMPAT_VENV)/bin/python -m pip install -q -c $(COMPAT_VENV)/constraints.txt $(COMPAT_PINS) -e '.[test]'
	touch $@

test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -c "import torch, torchvision, timm; print('compat: torch', torch.__version__, \
		'torchvision', torchvision.__version__, 'timm', timm.__version__)"
	$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)

# Regenerate the committed leaderboard from real runs (about 30 minutes on 2 quiet CPU cores; finished runs are skipped).
# Refuses to run from a tree with uncommitted changes (records name a code revision); ALLOW_DIRTY=1 overrides.
leaderboard: $(VENV)/.installed
	$(BIN)/python leaderboard/regenerate.py $(if $(ALLOW_DIRTY),--allow-dirty)

# The manual (docs/, mkdocs.yml) as a static site in site/; --strict fails on a broken link or a page
# missing from the navigation. mkdocs is the `docs` extra, installed here only.
$(VENV)/.docs: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site *.egg-info
