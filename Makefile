# One venv, made on first use; every target that runs code depends on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Real proxies the tests start on loopback ports, and the browser the portal tests drive
# (Debian packages).
SYSTEM_TOOLS := tinyproxy squid haproxy chromium

.PHONY: run test lint fuzz bench bench-quick profile clean system-deps screenshots

# The project's own bytecode is compiled once here: an editable install has none (and
# PYTHONDONTWRITEBYTECODE may forbid writing it later); with it every start is ~200 ms faster.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q tentacle_poll
	touch $(STAMP)

## run: a local server and one agent on loopback, a sample task printed live; Ctrl-C stops both
run: $(STAMP)
	$(BIN)/tentacle-poll demo

## test: the whole test suite (real TLS on loopback, real subprocesses, real proxies)
test: $(STAMP) system-deps
	$(BIN)/pytest

## screenshots: the portal tests, keeping their pictures in docs/portal/ (for docs/portal.md)
screenshots: $(STAMP) system-deps
	TENTACLE_POLL_SCREENSHOTS=1 $(BIN)/pytest tests/test_portal.py tests/test_portal_work.py

## fuzz: the property-based wire tests with a long profile (20,000 generated requests; about 4 minutes)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/test_wire_fuzz.py

## system-deps: install the proxies and the browser the tests run (and systemd-analyze), with apt-get, when missing
system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; \
	done; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "the tests need:$$missing; install them (e.g. sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

## bench: every speed and memory figure beside its in-run reference (about 10 minutes)
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.run --markdown .bench-cache/latest.md

## bench-quick: the same set at smaller sizes (under 2 minutes)
bench-quick: $(STAMP)
	$(BIN)/python -m tests.benchmarks.run --quick

## profile: where one bench group spends its time, per process (GROUP=streaming by default)
GROUP ?= streaming
profile: $(STAMP)
	mkdir -p .bench-cache
	$(BIN)/py-spy record --subprocesses --format raw -r 200 -o .bench-cache/profile-$(GROUP).txt \
	  -- $(BIN)/python -m tests.benchmarks.run --only $(GROUP)
	$(BIN)/python -m tests.benchmarks.profile_summary .bench-cache/profile-$(GROUP).txt

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check tentacle_poll tests
	$(BIN)/mypy tentacle_poll

clean:
	rm -rf $(VENV) .demo .bench-cache .pytest_cache .mypy_cache .ruff_cache
	find tentacle_poll tests -name __pycache__ -prune -exec rm -rf {} +
