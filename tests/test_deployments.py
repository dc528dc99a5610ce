"""The local deployment path of deployments/README.md, run as written: a Prefect server on 127.0.0.1 with a temp
PREFECT_HOME, the work pools, ``prefect deploy --all``, a process worker, deployment runs of the scheduled
retraining deployment with the tiny model on a demo set, then everything stopped (by PID, also on failure).

Marked ``deploy`` (``make test-deploy``). Two retraining rounds are triggered at once: the gpu pool's limit of one
flow run must run them one after the other, and the second continues from the first's checkpoint. A video added
between rounds is the only new media the third round decodes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from care.eval_schema import EvalConfig
from care.media.preprocess import PreprocessConfig
from care.media.synth import write_video
from care.pipeline import PipelineConfig
from care.store import catalog
from care.train.config import RLConfig
from care.train.retrain import RetrainConfig
from care.workspace import Workspace
from tests.deploy_helpers import (
    REPO,
    create_pools_and_deploy,
    flow_run_id,
    flow_run_logs,
    prefect_stack,
    retrain_params,
    wait_runs,
)

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

SCHEMAS = {"pipeline": PipelineConfig, "preprocess": PreprocessConfig, "rl": RLConfig, "evaluate": EvalConfig,
           "retrain": RetrainConfig}


@pytest.fixture
def stack(tmp_path):
    with prefect_stack(tmp_path) as s:
        yield s


def _add_training_video(data_root: Path) -> None:
    """Append a training row whose video is new (its observation image is an existing file)."""
    ann = data_root / "annotations" / "training_6k.jsonl"
    row = json.loads(ann.read_text().splitlines()[0])
    row.update(sample_id="demo-train-added", video_basename="demo-train-added.mp4")
    write_video(data_root / "videos" / row["video_source"] / row["video_basename"], n_frames=10, height=56, width=56)
    with ann.open("a") as f:
        f.write(json.dumps(row) + "\n")


def test_deploy_worker_and_scheduled_retraining(stack, demo_root, tiny_model_dir, tmp_path):
    api = stack.env["PREFECT_API_URL"]
    data_root = tmp_path / "data"
    shutil.copytree(demo_root, data_root)
    stack.env.update(CARE_DATA_ROOT=str(data_root), CARE_RETRAIN_MODEL=str(tiny_model_dir))

    # the commands of deployments/README.md
    create_pools_and_deploy(stack)

    deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
    assert set(deployments) == set(SCHEMAS) | {"gang-node"}
    node_schema = deployments["gang-node"]["parameter_openapi_schema"]  # a multi-node gang's other nodes
    assert set(node_schema["properties"]) == {"nproc_per_node", "nnodes", "rdzv_endpoint", "control", "run_key"}
    assert deployments["gang-node"]["work_pool_name"] == "gpu"
    for name, model in SCHEMAS.items():
        schema = deployments[name]["parameter_openapi_schema"]
        assert schema["properties"]["config"]["$ref"] == f"#/definitions/{model.__name__}", name
        assert set(schema["definitions"][model.__name__]["properties"]) == set(model.model_fields), name
        assert schema["required"] == ["config"], name
        assert deployments[name]["pull_steps"] == [  # CARE_CHECKOUT of the deploying shell
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert deployments["preprocess"]["work_pool_name"] == "cpu"
    assert {deployments[n]["work_pool_name"] for n in ("pipeline", "rl", "evaluate", "retrain")} == {"gpu"}
    [schedule] = deployments["retrain"]["schedules"]
    assert schedule["active"] and schedule["schedule"]["cron"] == "0 2 * * 1"
    assert schedule["schedule"]["timezone"] == "Europe/Berlin"
    defaults = RetrainConfig.model_validate(deployments["retrain"]["parameters"]["config"])
    assert (defaults.rl.data_root, defaults.rl.model) == (str(data_root), str(tiny_model_dir))
    pool = httpx.get(f"{api}/work_pools/gpu", timeout=10).json()
    assert pool["type"] == "process" and pool["concurrency_limit"] == 1

    stack.start("worker-gpu", "worker", "start", "--pool", "gpu", "--limit", "1", "--name", "gpu-0")
    params = json.dumps(retrain_params(str(tiny_model_dir), str(data_root)))
    # two rounds at once: the pool runs them one after the other, the second continues from the first
    ids = [flow_run_id(stack.run("deployment", "run", "retrain/retrain", "--param", f"config={params}"))
           for _ in range(2)]
    first, second = sorted(wait_runs(api, ids, seconds=420), key=lambda r: r["start_time"])
    assert [first["state_type"], second["state_type"]] == ["COMPLETED", "COMPLETED"], stack.log_tail()
    assert second["start_time"] >= first["end_time"]

    _add_training_video(data_root)
    third = flow_run_id(stack.run("deployment", "run", "retrain/retrain", "--param", f"config={params}", "--watch",
                                  "--watch-timeout", "300", timeout=330))
    assert wait_runs(api, [third], seconds=10)[0]["state_type"] == "COMPLETED"

    logs = [flow_run_logs(api, r["id"]) for r in (first, second)] + [flow_run_logs(api, third)]
    assert "continuing after iteration 0 " in logs[0] and "continuing after iteration 1 " in logs[1]
    assert "continuing after iteration 2 " in logs[2]
    counts = [tuple(map(int, re.search(r"(\d+) training samples, (\d+) media files \((\d+) decoded now",
                                       text).groups())) for text in logs]
    assert 0 < counts[0][2] <= counts[0][1]  # the first round decodes every distinct file (equal bytes: one entry)
    assert counts[1][2] == 0  # nothing new: every file was cached by the first round
    assert counts[2][:2] == (counts[1][0] + 1, counts[1][1] + 1) and counts[2][2] == 1  # only the added video
    ws = Workspace.at(tmp_path / "care_home")
    checkpoints = sorted(p.name for p in (ws.run_dir("retrain-test") / "checkpoints").iterdir())
    # each round ends with a checkpoint (and evaluates it); retention keeps the newest 2 (keep_checkpoints)
    assert checkpoints == ["iter-00002", "iter-00003"]
    labels = catalog.query("select distinct label from eval_results where run_id = 'retrain-test' order by 1",
                           path=ws.catalog_path)
    assert labels == [("iter-00001",), ("iter-00002",), ("iter-00003",)]
