# The two commands of the README: `make demo` and `make test`. Everything else supports them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types pytest install clean reference bench browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cites-risk demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

types: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy benchmarks scripts

# Debian's Chromium for the inspector page's end-to-end test. Installed when missing and we
# may (root with apt, as on CI); elsewhere the browser test reports itself skipped.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
			|| echo "chromium could not be installed: the browser test will be skipped"; \
		else echo "chromium not installed: the browser test will be skipped"; fi; \
	fi

pytest: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint types pytest

# Rebuild the committed reference tables from ../shared/data (developers only; never at run time).
reference: $(STAMP)
	$(BIN)/python scripts/build_reference.py

bench: $(STAMP)
	@for script in benchmarks/bench_*.py; do name=$$(basename $$script .py); \
		echo "== benchmarks.$$name"; $(BIN)/python -m benchmarks.$$name || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache output .cites-risk
