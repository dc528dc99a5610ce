"""The local deployment path of deployments/README.md, run as written: a Prefect server on 127.0.0.1 with a temp
PREFECT_HOME, the work pools, ``prefect deploy --all``, a process worker, deployment runs of the scheduled
retraining deployment with the tiny model on a demo set, then everything stopped (by PID, also on failure).

Marked ``deploy`` (``make test-deploy``). Two retraining rounds are triggered at once: the gpu pool's limit of one
flow run must run them one after the other, and the second continues from the first's checkpoint. A video added
between rounds is the only new media the third round decodes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from care.eval.eval_config import EvalConfig
from care.media.preprocess import PreprocessConfig
from care.media.synth import write_video
from care.pipeline import PipelineConfig
from care.store import catalog
from care.train.config import RLConfig
from care.train.retrain import RetrainConfig
from care.workspace import Workspace

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
SCHEMAS = {"pipeline": PipelineConfig, "preprocess": PreprocessConfig, "rl": RLConfig, "evaluate": EvalConfig,
           "retrain": RetrainConfig}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Stack:
    """Processes started by the test (each in its own process group), stopped by PID in reverse order."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen([PREFECT, *args], cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([PREFECT, "--no-prompt", *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the group: a worker's flow-run children too
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs.glob("*.log"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(api: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"Prefect server not healthy within {seconds} s (exit code {proc.poll()})")


def _wait_runs(api: str, ids: list[str], seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = [httpx.get(f"{api}/flow_runs/{i}", timeout=10).json() for i in ids]
        if all(r["state_type"] in TERMINAL for r in runs):
            return runs
        time.sleep(1)
    raise AssertionError(f"flow runs not finished within {seconds} s: {[r['state_type'] for r in runs]}")


def _flow_run_id(output: str) -> str:
    return next(line.split("UUID:")[1].strip() for line in output.splitlines() if "UUID:" in line)


def _logs(api: str, run_id: str) -> str:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return "\n".join(entry["message"] for entry in httpx.post(f"{api}/logs/filter", json=body, timeout=10).json())


@pytest.fixture
def stack(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", CARE_CHECKOUT=str(REPO),
               CARE_HOME=str(tmp_path / "care_home"), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    (tmp_path / "logs").mkdir()
    s = Stack(env, tmp_path / "logs")
    try:
        server = s.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services",
                         "--no-ui")
        _wait_healthy(env["PREFECT_API_URL"], server)
        yield s
    except BaseException:
        print(s.log_tail())
        raise
    finally:
        s.stop()


def _retrain_params(model: str, data_root: str) -> dict:
    return {"rl": {"run_name": "retrain-test", "model": model, "data_root": data_root, "iterations": 1,
                   "shuffle_options": False, "frames": {"nframes": 4},
                   "rollout": {"group_size": 4, "prompts_per_iteration": 2, "sampling": {"max_new_tokens": 48}},
                   "optim": {"learning_rate": 1e-3, "micro_batch_size": 8, "lr_scheduler": "constant"}},
            "preprocess_workers": 1, "eval_levels": ["L1"], "eval_limit_per_level": 4,
            "eval_decoding": {"max_new_tokens": 48}}


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
    stack.run("work-pool", "create", "cpu", "--type", "process")
    stack.run("work-pool", "create", "gpu", "--type", "process")
    stack.run("work-pool", "set-concurrency-limit", "gpu", "1")
    stack.run("deploy", "--all", "--prefect-file", "deployments/prefect.yaml", timeout=300)

    deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
    assert set(deployments) == set(SCHEMAS)
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
    params = json.dumps(_retrain_params(str(tiny_model_dir), str(data_root)))
    # two rounds at once: the pool runs them one after the other, the second continues from the first
    ids = [_flow_run_id(stack.run("deployment", "run", "retrain/retrain", "--param", f"config={params}"))
           for _ in range(2)]
    first, second = sorted(_wait_runs(api, ids, seconds=420), key=lambda r: r["start_time"])
    assert [first["state_type"], second["state_type"]] == ["COMPLETED", "COMPLETED"], stack.log_tail()
    assert second["start_time"] >= first["end_time"]

    _add_training_video(data_root)
    third = _flow_run_id(stack.run("deployment", "run", "retrain/retrain", "--param", f"config={params}", "--watch",
                                   "--watch-timeout", "300", timeout=330))
    assert _wait_runs(api, [third], seconds=10)[0]["state_type"] == "COMPLETED"

    logs = [_logs(api, r["id"]) for r in (first, second)] + [_logs(api, third)]
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
