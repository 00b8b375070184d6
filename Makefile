# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve profile test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## serve: run infaas on the embedded defaults (first start builds, registers and profiles the zoo)
serve: $(STAMP)
	$(VENV)/bin/infaas serve

## profile: build the example zoo, generate and profile every variant, print the table, plot
profile: $(STAMP)
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
	$(PY) bench/scheduler.py
	$(PY) bench/serving.py
	$(PY) bench/slo.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
