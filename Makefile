# The README commands. Each creates .venv when missing and refreshes it when setup.py changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pytest-xdist workers; CI has 2 cores.
TEST_WORKERS ?= 2
DEMO_WORKDIR ?= workdir/demo
# The linter, at least the version setup.py's `dev` extra names (0.13 retired UP038, which older
# versions still report on this code). `make lint` installs only ruff, not the package.
RUFF ?= ruff>=0.13
LINT_PATHS := gemmascope tests experiments benchmarks launch tools

.PHONY: demo test lint bench clean

$(VENV)/.base: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: setup.py $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m gemmascope --config=experiments/tiny_demo.py --workdir=$(DEMO_WORKDIR) --mode=all

test: $(VENV)/.test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

$(VENV)/.lint: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q '$(RUFF)'
	touch $@

lint: $(VENV)/.lint
	$(PY) -m ruff check $(LINT_PATHS)

clean:
	rm -rf $(VENV) workdir
