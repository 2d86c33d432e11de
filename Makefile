# One command per job, each creating the environment first if it is missing.
#   make demo   install, then run the default experiment (Split MNIST, ER) into runs/quickstart
#   make test   install, then run the test suite
#   make examples  install, then run each script of examples/ as a user does, checking its output
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCHAX := torchax==0.0.14.dev20261026

.PHONY: demo test examples lint bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,test]'
	$(PY) -m pip install -q --no-deps $(TORCHAX)
	touch $@

demo: install
	$(PY) -m sequax.launch.train --config=configs/quickstart.py --workdir=runs/quickstart

# Two worker processes (pytest-xdist), each taking whole test files, so a file's module
# fixtures are built once; TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

# The examples are whole 5-task runs in fresh processes (about a minute together), so they are
# a CI step of their own rather than part of the default suite.
examples: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m examples tests/examples

# ruff (lint and format) and the import layers and cycles (import-linter, .ci/import_layers.sh)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PY=$(PY) .ci/import_layers.sh

bench: install
	$(PY) -m sequax.launch.bench

clean:
	rm -rf $(VENV) runs
