# Two commands do all set-up on a fresh machine with python3 and make:
#   make demo   create .venv, install, run no-kd / kd / fitnet / fd on synth-av, print the table
#   make test   create .venv, install with test extras, run the CI test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
DEMO_METHODS ?= no-kd kd fitnet fd

.PHONY: demo test test-slow bench gpu-check leaderboard docs clean

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

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# Heavier checks that CI skips (minutes of CPU): full-size runs.
test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/overhead.py

# One short call on a GPU machine (installs nothing): the gpu-marked tests and one table of figures
# (benchmarks/gpu_check.py; small sizes without CUDA). Uses the venv as it is.
gpu-check:
	$(BIN)/python benchmarks/gpu_check.py

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
