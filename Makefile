# vlp — the whole set-up is `make fit` then `make test` on a fresh clone.
# `make install` installs the exact versions of requirements.lock (then vlp itself, editable);
# `make lock` re-resolves pyproject.toml's ranges into that file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?= configs/vilt/shapes_pretrain.yaml
# Test processes (pytest-xdist); tests/conftest.py splits the cores between them. A file's tests stay in
# one process (--dist loadfile), so a module's fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: install lock fit test test-all lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.lock
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install pip-tools
	$(PY) -m piptools compile --resolver=backtracking --extra dev --strip-extras --upgrade \
	  --no-emit-index-url --no-emit-find-links -c requirements/lock-constraints.txt \
	  -o requirements.lock pyproject.toml

fit: $(STAMP)
	$(PY) -m vlp fit --config $(RECIPE) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -m '' -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

format: $(STAMP)
	$(PY) -m ruff check --fix src tests
	$(PY) -m ruff format src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
