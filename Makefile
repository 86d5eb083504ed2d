# fcgan-studies. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# A wheel index for torch alone, e.g. https://download.pytorch.org/whl/cu124 (CUDA 12.4 GPUs);
# empty: pip's own configuration finds it (the CPU build, here from local disk).
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch spec and index the venv's torch came from, one line: when TORCH_SPEC or TORCH_INDEX
# says something else, torch is reinstalled (and the project after it).
TORCH_STAMP := $(VENV)/.torch
TORCH_LINE := $(TORCH_SPEC)$(if $(TORCH_INDEX), --index-url $(TORCH_INDEX))
STUDY ?= grid25
# Your table file or image folder for a template study (studies/table.yaml): the study is then
# named <study>-<file stem>, and compare/export/reeval find it under that name.
DATA ?=
STUDY_NAME := $(STUDY)$(if $(DATA),-$(basename $(notdir $(DATA))))
TRIALS ?=
# Two 1-thread workers ran ~2.2x the iterations/s of one 2-thread process on 2 cores.
WORKERS ?= 2
TOP ?=  # compare's --top (its default: 5)
FORMAT ?=  # compare's --format (its default: table)
SEEDS ?=  # reeval's fresh seeds; its own default is 10 (PacGAN reports 10 runs)
# PORT for ui (default 5000) and dashboard (default 8080); DASHBOARD_PORT is its old name.
PORT ?=
DASHBOARD_PORT ?=
# STORAGE: the Optuna storage (--storage) of sweep, compare, export, reeval and dashboard;
# STORE: the MLflow store ui opens (--store): a runs/ folder, an mlflow.db file or a URI.
STORAGE ?=
STORE ?=
PYTEST_ARGS ?=

STORAGE_ARG := $(if $(STORAGE),--storage '$(STORAGE)')
# Which trial export and reeval take (a multi-objective study needs one): TRIAL=N, or a rule
# PICK="smallest cost/g_params with val/pacgan_score >= 0.9" (no single quotes inside)
TRIAL ?=
PICK ?=
CHOICE_ARGS := $(if $(TRIAL),--trial $(TRIAL)) $(if $(PICK),--pick '$(PICK)')
SWEEP_ARGS := $(if $(TRIALS),--trials $(TRIALS)) --workers $(WORKERS) $(if $(DATA),--data $(DATA))

.PHONY: help install sweep train test test-slow lint compare export reeval bench ui dashboard clean FORCE

# The commands of the targets below print their results on stdout and nothing else goes there
# (the recipes are not echoed, installing writes to stderr): `make compare FORMAT=json > f.json`
# is a JSON file. A STORAGE URL with a password is not echoed either.

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The project is reinstalled when pyproject.toml changes. The pinned CPU torch goes in first, so
# the project's `torch>=...` is already satisfied and pip never pulls a multi-GB CUDA build.
# Torch is reinstalled when TORCH_SPEC or TORCH_INDEX, given on the command line or in the
# environment, differs from the stamp; a later plain `make sweep` keeps the torch installed.
TORCH_GIVEN := $(filter-out default file undefined,$(origin TORCH_SPEC) $(origin TORCH_INDEX))
ifneq ($(file < $(TORCH_STAMP)),$(TORCH_LINE))
ifneq ($(TORCH_GIVEN),)
$(TORCH_STAMP): FORCE
endif
endif

# Another spec or index: the old torch goes out first, or pip keeps a same-numbered CPU build
# as "already satisfied".
$(TORCH_STAMP):
	@echo "installing $(TORCH_LINE) into $(VENV)" >&2
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >&2
	$(if $(wildcard $(TORCH_STAMP)),@$(PY) -m pip uninstall -q -y torch >&2)
	@$(PY) -m pip install -q$(if $(TORCH_INDEX), --index-url '$(TORCH_INDEX)') '$(TORCH_SPEC)' >&2
	@printf '%s\n' '$(TORCH_LINE)' > $@

$(STAMP): pyproject.toml $(TORCH_STAMP)
	@echo "installing the project into $(VENV)" >&2
	@$(PY) -m pip install -q -e ".[dev]" >&2
	@touch $(STAMP)

FORCE:

install: $(STAMP) ## create .venv and install the project (GPU: TORCH_INDEX=URL TORCH_SPEC=torch==X)

sweep: $(STAMP) $(filter runs/data/%,$(DATA)) ## run a study: make sweep [STUDY=grid25] [TRIALS=N] [WORKERS=K] [DATA=file]
	@$(PY) -m pipeline sweep studies/$(STUDY).yaml $(SWEEP_ARGS) $(STORAGE_ARG)

# The tables that packages ship, written on demand: make sweep STUDY=table DATA=runs/data/penguins.csv
runs/data/%.csv: | $(STAMP)
	@$(PY) -m pipeline tables $* --out $@

train: $(STAMP) ## train one config: make train ARGS="data.name=ring8 train.epochs=5"
	@$(PY) -m pipeline train $(ARGS)

test: $(STAMP) ## the fast test suite (CPU, minutes)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP) ## the slow suite: PostgreSQL, MLflow server, browser, workers, full datasets
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

compare: $(STAMP) ## top-K trials: make compare [STUDY=grid25] [TOP=K] [FORMAT=table|markdown|csv|json]
	@$(PY) -m pipeline compare --study $(STUDY_NAME) $(if $(TOP),--top $(TOP)) $(if $(FORMAT),--format $(FORMAT)) $(STORAGE_ARG)

export: $(STAMP) ## export the best trial's generator: make export [STUDY=grid25] [TRIAL=N | PICK="rule"]
	@$(PY) -m pipeline export --study $(STUDY_NAME) $(STORAGE_ARG) $(CHOICE_ARGS)

reeval: $(STAMP) ## retrain a study's best config on fresh seeds: make reeval [STUDY=grid25] [SEEDS=N] [TRIAL=N | PICK="rule"]
	@$(PY) -m pipeline reeval --study $(STUDY_NAME) $(if $(SEEDS),--seeds $(SEEDS)) --workers $(WORKERS) $(STORAGE_ARG) $(CHOICE_ARGS)

bench: $(STAMP) ## the performance benchmark (~30 min, a quiet machine): bench/results.json
	$(PY) -m bench.bench --out bench

ui: $(STAMP) ## MLflow UI, http://127.0.0.1:5000: make ui [PORT=5000] [STORE=runs|mlflow.db|URI]
	@$(PY) -m pipeline ui --port $(or $(PORT),5000) $(if $(STORE),--store '$(STORE)')

dashboard: $(STAMP) ## optuna-dashboard, http://127.0.0.1:8080: make dashboard [PORT=8080] [STORAGE=...]
	@$(PY) -m pipeline dashboard --port $(or $(PORT),$(DASHBOARD_PORT),8080) $(STORAGE_ARG)

clean: ## remove local state (runs/, exports/) but keep .venv
	rm -rf runs exports
