# The two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/js/node_modules/.installed
SANDBOX_STAMP := .sandbox-venv/.installed
FRONTEND_DEPS := frontend/node_modules/.installed
FRONTEND_STAMP := platform_server/static/manifest.json
FRONTEND_SRC := $(shell find frontend/src -type f 2>/dev/null) frontend/build.mjs
ARGS ?=
PORT ?= 8888

.PHONY: install run test lint typecheck frontend-lint pytest bench clean

install: $(STAMP) $(NODE_STAMP) $(SANDBOX_STAMP) $(FRONTEND_STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt kernel_image/VERSION
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (PYTHON=... selects another).")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt -e '.[test]'
	@touch $(STAMP)

# JupyterLab's client library, which the compatibility tests drive from Node.js.
$(NODE_STAMP): tests/js/package.json tests/js/package-lock.json
	@command -v npm >/dev/null || { echo "Node.js 20+ with npm is needed (apt-get install nodejs npm)"; exit 1; }
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

# The IDE's front end: TypeScript bundled by esbuild into platform_server/static (hashed names
# and manifest.json, which the page handlers read).
$(FRONTEND_DEPS): frontend/package.json frontend/package-lock.json
	@command -v npm >/dev/null || { echo "Node.js 20+ with npm is needed (apt-get install nodejs npm)"; exit 1; }
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	@touch $(FRONTEND_DEPS)

$(FRONTEND_STAMP): $(FRONTEND_DEPS) $(FRONTEND_SRC)
	cd frontend && npm run build

# The sandboxes' own Python (numpy, pandas, scipy, the agent's deps), never the platform's.
$(SANDBOX_STAMP): $(STAMP) extensions/sandboxes/python_env.py kernel_image/requirements.txt kernel_image/lsp_cache.py
	$(BIN)/python -m extensions.sandboxes.python_env .sandbox-venv
	@touch $(SANDBOX_STAMP)

run: install
	$(BIN)/platform-server --ip=127.0.0.1 --port=$(PORT) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

frontend-lint: $(FRONTEND_DEPS)
	cd frontend && npm run typecheck && npm run lint

pytest: install
	$(BIN)/pytest $(ARGS)

# System packages first (installed as root, else named with the command to run), so that a
# machine without them stops before anything is built or run.
test:
	@PYTHON=$(PYTHON) scripts/system-deps
	@$(MAKE) --no-print-directory lint typecheck frontend-lint pytest

# Performance against baselines measured in the same run; prints ratios, writes results.json.
bench: install
	$(BIN)/python -m benchmarks.contents
	$(BIN)/python -m benchmarks.terminals
	$(BIN)/python -m benchmarks.kernels
	$(BIN)/python -m benchmarks.capacity
	$(BIN)/python -m benchmarks.intellisense
	$(BIN)/python -m benchmarks.collaboration
	$(BIN)/python -m benchmarks.database

clean:
	rm -rf $(VENV) .sandbox-venv .mypy_cache .ruff_cache .pytest_cache *.egg-info frontend/node_modules platform_server/static
