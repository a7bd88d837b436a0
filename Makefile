# The two quick-start commands: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
# One install stamp per extra (pyproject.toml): `make demo` needs the fake providers only
# ([demo]); `make test` and `make lint` need the test and lint tools too ([dev], which
# includes [demo]).
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed

.PHONY: demo test lint

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/pip
	$(VENV)/bin/pip install -q -e ".[demo]"
	touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

demo: $(DEMO_STAMP)
	$(VENV)/bin/mailsync up --demo

test: $(STAMP)
	bash scripts/ensure-postgres
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy mailsync flows tasks deployments bench
