# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
CUDA   ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ocp-graphpar-setup
DATA   ?=
DEMO_DIR ?= demo_run
DEMO_ARGS ?=
DEMO_DATA ?= data/demo
RESTART ?=

.PHONY: setup test lint demo data-demo clean FORCE

setup: $(STAMP)

# CUDA=cu128 (a PyTorch wheel index; docs/install.md, "CUDA") installs a CUDA torch and compiles
# torch-scatter/torch-sparse with CUDA. With it the script always runs (it takes seconds when all
# is there), so that a venv set up without CUDA is reported instead of silently kept.
$(STAMP): requirements.txt setup.cfg pyproject.toml scripts/setup_env.sh $(if $(strip $(CUDA)),FORCE)
	PYTHON=$(PYTHON) VENV=$(VENV) CUDA=$(CUDA) bash scripts/setup_env.sh
	@touch $@

test: setup
	$(PY) -m ruff check ocp_graphpar tests
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check ocp_graphpar tests
	$(PY) -m ruff format --check ocp_graphpar tests

# The main job (README, "Quick start"; docs/demo.md): dataset, GemNet-XL trained at gp 2 on 2 CPU ranks,
# S2EF predictions, IS2RS relaxations, leaderboard files, summary in $(DEMO_DIR)/summary.md.
# Re-running resumes where it stopped. DATA=trajectories or folders of *.traj instead of the
# embedded set; RESTART=1 starts over; DEMO_ARGS passes more options (ocp-graphpar demo -h).
demo: setup
	$(VENV)/bin/ocp-graphpar demo --out $(DEMO_DIR) $(if $(strip $(DATA)),--data $(DATA)) \
		$(if $(filter 1 yes true,$(RESTART)),--restart) $(DEMO_ARGS)

# The embedded EMT demo dataset alone (what `make demo` makes in its first stage), in $(DEMO_DATA).
data-demo: setup
	$(VENV)/bin/ocp-graphpar data demo --out $(DEMO_DATA)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
