# The two commands a fresh machine needs (see README): `make demo` and `make test`.
# Each creates or refreshes .venv and installs the project when pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint scan clean

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
	rm -rf $(VENV) .pytest_cache demo-output .mlflow-server

# checkov lives in its own venv: it pins packages that clash with ray/tensorflow.
SCAN_VENV ?= .venv-scan
CHECKOV := $(SCAN_VENV)/bin/checkov
CHECKOV_ARGS := --quiet --compact --skip-download

$(CHECKOV):
	python3 -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install -q --upgrade pip
	$(SCAN_VENV)/bin/pip install -q 'checkov==3.3.30'

scan: $(CHECKOV)
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV) -d infra --framework terraform $(CHECKOV_ARGS)
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV) -d cluster $(CHECKOV_ARGS)
	@if command -v terraform >/dev/null; then terraform fmt -check -recursive infra; \
	else echo "terraform not installed: fmt check skipped"; fi
