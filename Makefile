# vlp — the whole set-up is `make fit` then `make test` on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?= configs/vilt/shapes_pretrain.yaml

.PHONY: install fit test test-all lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

fit: $(STAMP)
	$(PY) -m vlp fit --config $(RECIPE)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

format: $(STAMP)
	$(PY) -m ruff check --fix src tests
	$(PY) -m ruff format src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
