# The doors everyone uses: make demo, make test, make lint, make bench.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every dependency pinned (make lock): the image installs with CONSTRAINTS, make test and
# make demo with DEV_CONSTRAINTS (the same pins plus the dev and demo extras).
CONSTRAINTS := requirements/constraints.txt
DEV_CONSTRAINTS := requirements/constraints-dev.txt

.PHONY: demo demo-node test lint typecheck node-functions bench bench-soak lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml or the pins change.
$(VENV)/.demo-installed: pyproject.toml $(DEV_CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(DEV_CONSTRAINTS) -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(DEV_CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(DEV_CONSTRAINTS) -e '.[dev,demo]'
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/shardwise demo

# The same demo with AWS's documented Node.js handler (examples/node) through the Runtime API.
demo-node: $(VENV)/.demo-installed node-functions
	$(BIN)/shardwise demo --node $(NODE_FUNCTIONS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

# The Node.js example's aws-lambda-ric (the demo's and the tests' Node.js functions run through it),
# which npm builds from source (curl, aws-lambda-cpp and a native addon: about 35 s on 2 cores):
# npm ci runs again only when the lockfile changes.
NODE_FUNCTIONS := examples/node
$(NODE_FUNCTIONS)/node_modules/.installed: $(NODE_FUNCTIONS)/package.json $(NODE_FUNCTIONS)/package-lock.json
	cd $(NODE_FUNCTIONS) && npm ci --no-audit --no-fund
	touch $@

node-functions: $(NODE_FUNCTIONS)/node_modules/.installed

test: lint typecheck node-functions
	$(BIN)/python -m pytest

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

# RSS over 10 minutes of sustained load; not part of make bench.
bench-soak: $(VENV)/.dev-installed
	$(BIN)/python -m bench --only soak --output bench/results/soak.json

# Re-pin every dependency from pyproject.toml with uv's resolver (the only target that needs
# uv; it is installed into .venv here). Commit both files; the image and CI use them.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--custom-compile-command 'make lock'
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'uv>=0.5'
	$(UV_COMPILE) --output-file $(CONSTRAINTS)
	$(UV_COMPILE) --extra dev --extra demo --output-file $(DEV_CONSTRAINTS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache $(NODE_FUNCTIONS)/node_modules
