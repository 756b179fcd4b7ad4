# The two front-door commands: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup lint test test-fast demo bench lab-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check controller tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Lint, types, import contracts, then the whole suite (unit + integration on real upsd/sshd).
test: lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

demo: $(STAMP)
	scripts/demo.sh

bench: $(STAMP)
	$(PY) -m benchmarks

lab-down: $(STAMP)
	$(VENV)/bin/hecate lab down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
