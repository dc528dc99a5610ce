# The two commands a newcomer needs:  make run   (the whole pipeline on the demo set)
#                                      make test  (lint, layer contracts, tests)
# Both create .venv and install everything first; nothing needs to be done by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
EXTRAS ?= dev

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test lint unit test-deploy test-faults bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/care run

lint: $(STAMP)
	$(BIN)/ruff check care tasks flows tests benchmarks
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not deploy and not faults" --timeout 900

test: lint unit

# SIGKILL inside every pipeline stage, then a re-run equal to an uninterrupted run (docs/reliability.md)
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults --timeout 1800

test-deploy: $(STAMP)
	$(BIN)/python -m pytest -q -m deploy --timeout 900

# the bench extra (trl, datasets, py-spy) on top of the environment make run / make test built, or a new one
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,dask]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .care .pytest_cache
