# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# what `serve` needs (the package) and what `test` adds (the dev extra)
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed

.PHONY: serve profile test bench clean python-version

python-version:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "infaas needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)." >&2; \
	  echo "Install one (e.g. apt-get install python3.11 python3.11-venv) and run" >&2; \
	  echo "  make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; exit 1; }

$(BASE): pyproject.toml | python-version
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(BASE)

$(STAMP): $(BASE)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## serve: run infaas on the embedded defaults (first start builds, registers and profiles the zoo)
serve: $(BASE)
	$(VENV)/bin/infaas serve

## profile: build the example zoo, generate and profile every variant, print the table, plot
profile: $(BASE)
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
