# One venv, made on first use; every target that runs code depends on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: a local server and one agent on loopback, a sample task printed live; Ctrl-C stops both
run: $(STAMP)
	$(BIN)/tentacle-poll demo

## test: the whole test suite (real TLS on loopback, real subprocesses)
test: $(STAMP)
	$(BIN)/pytest

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check tentacle_poll tests
	$(BIN)/mypy tentacle_poll

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
