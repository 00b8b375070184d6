# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## serve: build the example zoo, generate and profile its variants, print the table, plot
serve: $(STAMP)
	$(VENV)/bin/infaas zoo build
	$(VENV)/bin/infaas profile

## test: lint, type-check and run the whole test suite
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/variants.py
	$(PY) bench/crypto.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
