# The doors everyone uses: make demo, make test, make lint, make bench.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every dependency pinned (make lock): the image installs with CONSTRAINTS, make test and
# make demo with DEV_CONSTRAINTS (the same pins plus the dev and demo extras).
CONSTRAINTS := requirements/constraints.txt
DEV_CONSTRAINTS := requirements/constraints-dev.txt

.PHONY: demo test lint typecheck bench bench-soak lock clean

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

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

test: lint typecheck
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
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
