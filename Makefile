# The targets people use are the targets CI uses.
#   make run    set up everything, then serve the default model at http://127.0.0.1:8500/v1
#   make test   set up everything, then lint, type-check and run every test
#   make bench  run the benchmarks and rewrite docs/benchmarks.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint typecheck pytest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/rbee up

lint: setup
	$(BIN)/ruff check rbee tests bench
	$(BIN)/ruff format --check rbee tests bench

typecheck: setup
	$(BIN)/mypy --strict rbee

pytest: setup
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/relay.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache
