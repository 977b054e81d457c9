# The two commands of the README's quickstart: `make run` and `make test`; and `make bench`
# (bench/, issue 6), e.g. make bench ARGS='--peer litellm' or ARGS='--quick --scenarios A,C'.
VENV ?= .venv
PYTHON ?= python3
# `make test` runs the whole suite twice, in random order (pytest-randomly), with two seeds: 1 and
# one from the date; each run on two processes (pytest-xdist). Replay one order with
# `make test SEEDS=N`; PYTEST_ARGS='-n 0' runs in one process.
SEEDS ?= 1 $(shell date -u +%Y%m%d)
PYTEST_ARGS ?= -n 2 --dist loadscope

.PHONY: run test lint services bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/gih serve

services:
	scripts/services.sh

test: $(VENV)/.installed services
	@status=0; for seed in $(SEEDS); do \
		echo "== the suite in random order, seed $$seed (replay: make test SEEDS=$$seed)"; \
		$(VENV)/bin/python -m pytest -p randomly --randomly-seed=$$seed $(PYTEST_ARGS) \
			|| status=1; \
	done; exit $$status

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed services
	$(VENV)/bin/python -m bench $(ARGS)
