# The targets people use are the targets CI uses.
#   make run    set up everything, then serve the default model at http://127.0.0.1:8500/v1
#   make test   set up everything, then lint, type-check and run every test
#   make bench  run the benchmarks (relay, cascade, fanout, forward, engines), rewrite docs/benchmarks.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# System packages the SSH-hive tests need (each hive is a network namespace running its own sshd).
SYSDEPS := openssh-server openssh-client iproute2

.PHONY: setup sysdeps run test lint typecheck pytest bench clean

setup: $(STAMP)

# The mlx extra brings mlx[cpu] on Linux: the MLX engine's tests run it for real on the CPU.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,mlx]'
	touch $(STAMP)

sysdeps:
	@if [ -x /usr/sbin/sshd ] && command -v ip >/dev/null && command -v ssh-keygen >/dev/null \
		&& command -v ssh >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends $(SYSDEPS); \
	else \
		echo "missing system packages: install $(SYSDEPS) (as root: apt-get install $(SYSDEPS))" >&2; \
		exit 1; \
	fi

run: setup
	$(BIN)/rbee up

lint: setup
	$(BIN)/ruff check rbee tests bench
	$(BIN)/ruff format --check rbee tests bench

typecheck: setup
	$(BIN)/mypy --strict rbee

pytest: setup
	$(BIN)/python -m pytest

test: sysdeps lint typecheck pytest

bench: setup sysdeps
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/cascade.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/forward.py
	$(BIN)/python bench/engines.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache
