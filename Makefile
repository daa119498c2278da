# pylivermore: every target runs inside the project's virtualenv (.venv), created on demand.
.DEFAULT_GOAL := all
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all install lint lua-check test test-unit test-redis demo bench clean

all: lint test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check pylivermore tests benchmarks
	$(VENV)/bin/ruff format --check pylivermore tests benchmarks
	$(VENV)/bin/mypy
	$(MAKE) -s lua-check

lua-check: $(STAMP)
	$(PY) -c "import sys; from pylivermore._scripts import main; sys.exit(main())"

test: $(STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest -m "not redis"

test-redis: $(STAMP)
	$(PY) -m pytest -m redis

demo: $(STAMP)
	$(PY) -m pylivermore.demo

# Quick form (< 3 min on 2 cores): per operation, contention grid, 10,000 leases; ratios printed, reports in
# benchmarks/out/. Full form: $(PY) benchmarks/bench.py --full; CI smoke form: --smoke. Plots need '.[bench]'.
bench: $(STAMP)
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis
