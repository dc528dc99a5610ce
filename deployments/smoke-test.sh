#!/usr/bin/env bash
# Checks a built worker image end to end on CPU (no GPU needed, nothing outside the container reached):
#
#   docker run --rm care-worker deployments/smoke-test.sh
#
# 1. the vLLM environment imports vLLM and the vLLM side of the rollout backend (care.models.vllm_worker);
# 2. `care data demo` and `care models tiny` make a demo set and the tiny Qwen2.5-VL in a scratch workspace;
# 3. the local deployment path of deployments/README.md inside the container: a Prefect server on 127.0.0.1,
#    the cpu and gpu pools, `prefect deploy --all`, the image's default worker command (gpu pool, --limit 1), one
#    scheduled-retraining round (preprocess -> 1 RL iteration -> evaluation) run through the deployment, and the
#    round's evaluation rows read back from the catalog.
#
# Everything goes to a temporary folder (PREFECT_HOME, CARE_HOME, data, model), removed at the end; the server and
# the worker (with its flow-run children, as a process group) are stopped by PID, also on failure. Run it from
# the checkout (/opt/care in the image). 1.5 min on 2 CPU cores (3.5 min the first time after a build, with cold
# file caches).
set -euo pipefail
set -m   # background jobs get their own process groups, so a worker is stopped with its flow-run children

CHECKOUT=${CARE_CHECKOUT:-$PWD}
VLLM_PYTHON=${VLLM_PYTHON:-$CHECKOUT/.venv-vllm/bin/python}
PORT=${PORT:-4200}
cd "$CHECKOUT"

SCRATCH=$(mktemp -d)
SERVER='' WORKER=''
cleanup() {
    [[ -n $WORKER ]] && kill -- "-$WORKER" 2>/dev/null
    [[ -n $SERVER ]] && kill -- "-$SERVER" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "vLLM environment ($VLLM_PYTHON)"
"$VLLM_PYTHON" - <<'EOF'
import importlib.metadata as md

import torch
import vllm
from vllm import LLM, SamplingParams  # noqa: F401  (the engine entry points the worker uses)

import care.models.vllm_worker as worker

worker.check_transformers()
print(f"vllm {vllm.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"available: {torch.cuda.is_available()}), transformers {md.version('transformers')}")
EOF

export PREFECT_HOME=$SCRATCH/prefect PREFECT_API_URL=http://127.0.0.1:$PORT/api CARE_CHECKOUT=$CHECKOUT
export CARE_HOME=$SCRATCH/care CARE_DATA_ROOT=$SCRATCH/care/data/demo CARE_RETRAIN_MODEL=$SCRATCH/care/models/tiny
export PREFECT_SERVER_ANALYTICS_ENABLED=false

step "demo data and tiny model"
care data demo "$CARE_DATA_ROOT" --train 64 --val 32
care models tiny "$CARE_RETRAIN_MODEL" --data-root "$CARE_DATA_ROOT"

step "Prefect server on 127.0.0.1:$PORT"
prefect server start --host 127.0.0.1 --port "$PORT" --no-ui >"$SCRATCH/server.log" 2>&1 &
SERVER=$!
# the health wait of `care` itself (care.cli.runtime.wait_healthy): gives up when the server exits or after 120 s
python3 -c "import os, sys; from care.cli.runtime import wait_healthy
sys.exit(0 if wait_healthy(sys.argv[1], lambda: os.path.exists(f'/proc/{sys.argv[2]}')) else 1)" \
    "$PREFECT_API_URL" "$SERVER" || { cat "$SCRATCH/server.log"; exit 1; }
python3 -c "import urllib.request as u; print('health:', u.urlopen('$PREFECT_API_URL/health').read().decode())"

step "work pools and deployments"
prefect work-pool create cpu --type process
prefect work-pool create gpu --type process
prefect work-pool set-concurrency-limit gpu 1
prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

step "gpu worker (the image's default command)"
prefect worker start --pool gpu --limit 1 --type process --name smoke-gpu-0 >"$SCRATCH/worker.log" 2>&1 &
WORKER=$!

step "one retraining round through the retrain/retrain deployment"
start=$(date +%s)
if ! prefect deployment run retrain/retrain --watch --watch-timeout 600 --param config='{
  "rl": {"run_name": "retrain-smoke", "model": "'"$CARE_RETRAIN_MODEL"'", "data_root": "'"$CARE_DATA_ROOT"'",
         "iterations": 1, "shuffle_options": false, "frames": {"nframes": 4},
         "rollout": {"group_size": 4, "prompts_per_iteration": 2, "sampling": {"max_new_tokens": 48}},
         "optim": {"learning_rate": 1e-3, "micro_batch_size": 8, "lr_scheduler": "constant"}},
  "preprocess_workers": 1, "eval_levels": ["L1"], "eval_limit_per_level": 4,
  "eval_decoding": {"max_new_tokens": 48}}'; then
    echo "--- worker log"; cat "$SCRATCH/worker.log"
    exit 1
fi
echo "round: $(($(date +%s) - start)) s"

step "catalog"
result=$(care --json sql "select label, level, judge, n, accuracy from eval_results
                         where run_id = 'retrain-smoke' order by level, judge")
echo "$result"
[[ $result == *iter-00001* ]] || { echo "no evaluation of iter-00001 in the catalog" >&2; exit 1; }

step "smoke test passed"
