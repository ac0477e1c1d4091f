# The two commands a fresh machine needs (see README): `make demo` and `make test`.
# Each creates or refreshes .venv and installs the project when pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check imgrec jobs tests benchmarks

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest -m '' $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache demo-output
