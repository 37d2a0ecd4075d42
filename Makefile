# The only set-up on a fresh machine is one of these targets: each creates .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_DIR ?= runs/default
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1

.PHONY: run test demo lab lint clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

run: venv
	$(PY) -m workbench run --run-dir $(RUN_DIR)

test: venv
	WORKBENCH_SMOKE=1 $(PY) -m pytest --nbmake tests notebooks

demo: venv
	$(PY) -m workbench demo

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

lint: venv
	$(VENV)/bin/ruff check workbench tests

clean:
	rm -rf runs/ .pytest_cache
