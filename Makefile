# fcgan-studies. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUDY ?= grid25
# Your table file or image folder for a template study (studies/table.yaml): the study is then
# named <study>-<file stem>, and compare/export/reeval find it under that name.
DATA ?=
STUDY_NAME := $(STUDY)$(if $(DATA),-$(basename $(notdir $(DATA))))
TRIALS ?=
# Two 1-thread workers ran ~2.2x the iterations/s of one 2-thread process on 2 cores.
WORKERS ?= 2
TOP ?= 5
FORMAT ?= table
SEEDS ?= 10  # results rows: PacGAN reports 10 runs
PORT ?= 5000
DASHBOARD_PORT ?= 8080
PYTEST_ARGS ?=

SWEEP_ARGS := $(if $(TRIALS),--trials $(TRIALS)) --workers $(WORKERS) $(if $(DATA),--data $(DATA))

.PHONY: help install sweep train test test-slow lint compare export reeval bench ui dashboard clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The venv is rebuilt when pyproject.toml changes. The pinned CPU torch goes in first, so the
# project's `torch>=...` is already satisfied and pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (CPU torch: TORCH_SPEC=...)

sweep: $(STAMP) $(filter runs/data/%,$(DATA)) ## run a study: make sweep [STUDY=grid25] [TRIALS=N] [WORKERS=K] [DATA=file]
	$(PY) -m pipeline sweep studies/$(STUDY).yaml $(SWEEP_ARGS)

# The tables that packages ship, written on demand: make sweep STUDY=table DATA=runs/data/penguins.csv
runs/data/%.csv: | $(STAMP)
	$(PY) -m pipeline tables $* --out $@

train: $(STAMP) ## train one config: make train ARGS="data.name=ring8 train.epochs=5"
	$(PY) -m pipeline train $(ARGS)

test: $(STAMP) ## the fast test suite (CPU, minutes)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP) ## the slow suite: PostgreSQL, MLflow server, browser, workers, full datasets
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

compare: $(STAMP) ## top-K trials: make compare [STUDY=grid25] [TOP=5] [FORMAT=table|markdown|csv|json]
	$(PY) -m pipeline compare --study $(STUDY_NAME) --top $(TOP) --format $(FORMAT)

export: $(STAMP) ## export the best trial's generator: make export [STUDY=grid25]
	$(PY) -m pipeline export --study $(STUDY_NAME)

reeval: $(STAMP) ## retrain a study's best config on fresh seeds: make reeval [STUDY=grid25] [SEEDS=5]
	$(PY) -m pipeline reeval --study $(STUDY_NAME) --seeds $(SEEDS) --workers $(WORKERS)

bench: $(STAMP) ## the performance benchmark (~30 min, a quiet machine): bench/results.json
	$(PY) -m bench.bench --out bench

ui: $(STAMP) ## MLflow UI on the project's store, http://127.0.0.1:$(PORT)
	$(PY) -m pipeline ui --port $(PORT)

dashboard: $(STAMP) ## optuna-dashboard on the study storage, http://127.0.0.1:$(DASHBOARD_PORT)
	$(PY) -m pipeline dashboard --port $(DASHBOARD_PORT)

clean: ## remove local state (runs/, exports/) but keep .venv
	rm -rf runs exports
