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

STUDY_270M_WORKDIR ?= workdir/gemma3_270m_local

.PHONY: demo demo-transcoders test lint bench clean browser study-270m study-270m-smoke test-real-study

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

# The demo with Gemma Scope 2's transcoders at every layer as well (docs/transcoders.md): a
# second command, since they add about two thirds of the demo's time.
demo-transcoders: $(VENV)/.base
	$(PY) -m gemmascope --config=experiments/tiny_demo.py:transcoders --workdir=$(DEMO_WORKDIR)_transcoders --mode=all

# The real-model study (docs/gemma3_270m_study.md): the real Gemma 3 270M from the test extra.
study-270m: $(VENV)/.test
	$(PY) -m gemmascope --config=experiments/gemma3_270m_local.py --workdir=$(STUDY_270M_WORKDIR) --mode=all

# The same study at one depth and a few steps (minutes): every stage on the real model.
study-270m-smoke: $(VENV)/.test
	$(PY) -m gemmascope --config=experiments/gemma3_270m_local.py:smoke --workdir=$(STUDY_270M_WORKDIR)_smoke --mode=all

test: $(VENV)/.test browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15 tests

# The browser tests (tests/inspect/test_site_in_browser.py) open the inspect site in Debian's
# headless Chromium. Installed with apt-get when missing and we are root; otherwise this says how
# (the tests then skip with that message). Never fails the build.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing chromium for the browser tests (apt-get)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			>/dev/null) || echo "apt-get could not install chromium: the browser tests will skip"; \
	else \
		echo "Chromium not found: the browser tests will skip. Install it with"; \
		echo "  sudo apt-get install chromium   (or set GEMMASCOPE_CHROMIUM to a Chromium binary)"; \
	fi

$(VENV)/.lint: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q '$(RUFF)'
	touch $@

lint: $(VENV)/.lint
	$(PY) -m ruff check $(LINT_PATHS)

clean:
	rm -rf $(VENV) workdir

# The real-model study's smoke size checked against transformers (3+ minutes; not in `make test`).
test-real-study: $(VENV)/.test
	GEMMASCOPE_REAL_STUDY_TEST=1 $(PY) -m pytest -q tests/model/test_gemma3_270m_study.py
