# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ocp-graphpar-setup
DATA   ?=
DEMO_DIR ?= demo_run

.PHONY: setup test lint demo data-demo clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml scripts/setup_env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_env.sh
	@touch $@

test: setup
	$(PY) -m ruff check ocp_graphpar tests
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check ocp_graphpar tests
	$(PY) -m ruff format --check ocp_graphpar tests

# Until the full demo pipeline lands, `make demo` builds the embedded demo dataset.
demo: setup
	$(VENV)/bin/ocp-graphpar data demo --out $(DEMO_DIR)/data --overwrite

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
