# The two front-door commands: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: system setup lint test test-fast demo drills bench docs lab-down clean

# Debian packages the lab runs for real; no-op when they are already installed.
system:
	scripts/setup-machine.sh

# The product and, as its own distribution, the lab (which adds `hecate lab ...` to the CLI).
$(STAMP): pyproject.toml hecate-lab/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -e ./hecate-lab
	touch $(STAMP)

setup: system $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check controller hecate-lab tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/update-docs.py --check

# Lint, types, import contracts, then the whole suite (unit + integration on real upsd/sshd).
test: system lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

demo: system $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH scripts/demo.sh

docs: $(STAMP)
	$(PY) scripts/update-docs.py

# The three disruptive drills, executed against a fresh lab (not part of `make test`).
drills: system $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH scripts/lab-drills.sh

bench: $(STAMP)
	$(PY) -m benchmarks

lab-down: $(STAMP)
	$(VENV)/bin/hecate lab down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
