# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck fmt bench redis-server oidc-server clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Tests start their own redis-server processes; install the Debian package if it is missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing the Debian package redis-server"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null || { \
	    echo "ERROR: redis-server is missing and could not be installed (need root and apt)." >&2; \
	    echo "Install it (Debian/Ubuntu: apt-get install redis-server) and run make test again." >&2; \
	    exit 1; }; }
	@command -v redis-cli >/dev/null 2>&1 || { echo "ERROR: redis-cli is missing" >&2; exit 1; }

# The OAuth integration tests run a real OpenID provider (panva/oidc-provider, pinned in
# tests/oidc_server/package-lock.json) on Node.js >= 18; `npm ci` runs only when the lock changed.
OIDC_DIR := tests/oidc_server
OIDC_STAMP := $(OIDC_DIR)/node_modules/.installed

oidc-server: $(OIDC_STAMP)

$(OIDC_STAMP): $(OIDC_DIR)/package.json $(OIDC_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  echo "node/npm not found: installing the Debian packages nodejs and npm"; \
	  (apt-get update -qq && apt-get install -y -qq nodejs npm) >/dev/null || { \
	    echo "ERROR: Node.js >= 18 with npm is needed for the OAuth tests (apt-get install nodejs npm)." >&2; \
	    exit 1; }; }
	cd $(OIDC_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(OIDC_STAMP)

demo: venv
	$(PY) scripts/demo.py

test: venv redis-server oidc-server
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) scripts/gen_sync.py --check  # coordinator/sync/_generated.py is up to date

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# What a fleet feels (docs/performance.md); ARGS='--compare REV' runs an older tree beside it.
bench: venv redis-server
	$(PY) scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
