# On a fresh machine these targets are the only set-up: each creates .venv when it is missing
# (CPU torch first, from its pinned wheel, then the project with its dev extras).
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
RUN_DIR ?= runs/default
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
# Nothing is downloaded at run time: no model hub, no datasets hub.
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1

.PHONY: run methods test test-fast demo lab lint format typecheck clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

run: venv
	$(PY) -m workbench run --run-dir $(RUN_DIR)

# The rollout-free methods side by side (DPO, SafeDPO, MoCAN; docs/design.md §6.14), on the
# finished data, sft, reward and cost stages of RUN_DIR. Not part of `make run`: the default
# grid (24 runs) takes about an hour on 2 CPU cores (an estimate).
methods: venv
	$(PY) -m workbench methods --run-dir $(RUN_DIR)

# The full suite (CI): unit tests, smoke trainers, the notebooks (nbmake) and the demo in a
# real browser. One smoke run, built once in a fresh temporary folder, serves the tests that
# need trained models and every notebook (WORKBENCH_SMOKE_RUN). TEST_WORKERS pytest-xdist
# workers (default: one per core, at most 4) share it: a stage being built is locked, the
# other workers wait for it and reuse it. Each test file runs in one worker (--dist loadfile),
# with one torch thread per worker.
test: venv
	@# the demo's browser test drives Debian's chromium through playwright (never `playwright install`)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	@smoke=$$(mktemp -d "$${TMPDIR:-/tmp}/workbench-smoke.XXXXXX"); \
	WORKBENCH_SMOKE=1 WORKBENCH_SMOKE_RUN=$$smoke/run $(PY) -m pytest --nbmake -n $(TEST_WORKERS) \
	  --dist loadfile tests notebooks; \
	status=$$?; rm -rf "$$smoke"; exit $$status

# The unit tier: formulas, configs, schema, kernels, layering, lint -- no training, no notebooks.
test-fast: venv
	$(PY) -m pytest -m "not slow" tests

# the latest finished run under runs/, else the checkpoints shipped in assets/;
# e.g. make demo DEMO_ARGS="--run-dir runs/mine --port 7861"
demo: venv
	$(PY) -m workbench demo $(DEMO_ARGS)

# JupyterLab rooted at the repository, so the run reports (runs/*/analyze/report.html), docs/
# and README.md are in its file browser, which opens on notebooks/. (A positional folder,
# `jupyter lab notebooks/`, would become the root; preferred_dir is relative to the root.)
# More flags: make lab LAB_ARGS="--no-browser --port 8889"
lab: venv
	$(VENV)/bin/jupyter lab --notebook-dir=. --FileContentsManager.preferred_dir=notebooks $(LAB_ARGS)

lint: venv
	$(VENV)/bin/ruff check workbench tests
	$(VENV)/bin/ruff format --check workbench tests

format: venv
	$(VENV)/bin/ruff format workbench tests
	$(VENV)/bin/ruff check --fix workbench tests

typecheck: venv
	$(VENV)/bin/mypy workbench

clean:
	rm -rf runs/ .pytest_cache
