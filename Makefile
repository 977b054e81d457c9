# The two commands of the README's quickstart: `make run` and `make test`; and `make bench`
# (bench/, issue 6), e.g. make bench ARGS='--peer litellm' or ARGS='--quick --scenarios A,C'.
VENV ?= .venv
PYTHON ?= python3

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
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed services
	$(VENV)/bin/python -m bench $(ARGS)
