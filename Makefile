# The targets people use are the targets CI uses.
#   make run    set up everything, then serve the default model at http://127.0.0.1:8500/v1
#   make test   set up everything, then lint, type-check and run every test
#   make bench  run the benchmarks (relay, cascade, fanout, forward, engines, chaos,
#               overload, structured), rewrite docs/benchmarks.md
#   make lock   re-resolve requirements.lock to the newest releases pyproject.toml allows
#
# Every install takes its versions from requirements.lock (as constraints, for build environments
# too), so a fresh machine next month installs what was tested today.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
# pip's own constraints from the machine's config still apply; the lock adds to them.
PIP_LOCKED := $(BIN)/python -m pip install --quiet -c $(LOCK) --build-constraint $(LOCK)
LOCK_EXTRAS := dev mlx bench tools

# System packages the tests need: SSH hives (each a network namespace running its own sshd) and
# the crontab `rbee sweep --install-cron` writes to, and systemd-analyze, which checks the timer
# units it writes where a systemd user instance runs.
SYSDEPS := openssh-server openssh-client iproute2 cron systemd

.PHONY: setup sysdeps run test lint typecheck pytest bench lock clean

setup: $(STAMP)

# The mlx extra brings mlx[cpu] on Linux: the MLX engine's tests run it for real on the CPU.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip setuptools wheel
	$(PIP_LOCKED) -e '.[dev,mlx]'
	touch $(STAMP)

sysdeps:
	@if [ -x /usr/sbin/sshd ] && command -v ip >/dev/null && command -v ssh-keygen >/dev/null \
		&& command -v ssh >/dev/null && command -v crontab >/dev/null \
		&& command -v systemd-analyze >/dev/null; then :; \
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
	$(PIP_LOCKED) -e '.[dev,bench]'
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/cascade.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/forward.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/chaos.py
	$(BIN)/python bench/overload.py
	$(BIN)/python bench/structured.py

# One lock for every platform and Python rbee supports (uv resolves "universally": markers keep
# what differs, such as mlx on macOS and mlx[cpu] on Linux). uv itself comes from the lock.
lock:
	$(PYTHON) -m venv .cache/lock-venv
	.cache/lock-venv/bin/python -m pip install --quiet -c $(LOCK) uv
	.cache/lock-venv/bin/uv pip compile --quiet --universal --python-version 3.11 --upgrade \
		--custom-compile-command 'make lock' $(foreach e,$(LOCK_EXTRAS),--extra $(e)) \
		pyproject.toml -o $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache
