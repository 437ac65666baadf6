# The two README commands. Each creates .venv when missing and refreshes it when setup.py changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pytest-xdist workers; CI has 2 cores.
TEST_WORKERS ?= 2
DEMO_WORKDIR ?= workdir/demo

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

lint:
	$(PY) -m pip install -q ruff && $(PY) -m ruff check gemmascope tests experiments benchmarks launch

clean:
	rm -rf $(VENV) workdir
