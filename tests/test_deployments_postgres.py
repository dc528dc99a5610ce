"""The deployments of deployments/prefect.yaml on a Prefect server backed by a real PostgreSQL server
(docs/scaling.md, "Many workers: Postgres"), with the server's services running.

A throwaway PostgreSQL (Debian's ``postgresql`` package, binaries under /usr/lib/postgresql/*/bin) is initialised
in a temp folder, listens on 127.0.0.1 only, on a free port, with its unix socket in that folder, and runs as the
``postgres`` system user when the test runs as root (PostgreSQL refuses to run as root). Prefect gets a database
and a role with a password: ``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...@127.0.0.1:PORT/DB``.

The module checks, each time also in the Postgres tables themselves:

- the scheduler service turns the retrain deployment's cron (Mondays 02:00 Europe/Berlin) into SCHEDULED runs;
- one retraining round through a process worker on the ``gpu`` pool completes (tiny model, demo set);
- two process workers polling the ``cpu`` pool share the ``preprocess`` runs: each run is executed exactly once,
  and both workers take some;
- ``prefect flow-run cancel`` on a running retraining round ends CANCELLED, and no process of that flow run is
  left.

Marked ``deploy`` and ``postgres`` (``make test-deploy-postgres``, which installs the package when it is missing).
Every process started here (PostgreSQL, Prefect server, workers) is stopped by PID, also when a test fails.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from care.data.demo import make_demo_benchmark
from care.store import catalog
from care.workspace import Workspace
from tests.deploy_helpers import (
    create_pools_and_deploy,
    flow_run_id,
    flow_run_logs,
    free_port,
    prefect_stack,
    retrain_params,
    wait_runs,
)

pytestmark = [pytest.mark.deploy, pytest.mark.postgres, pytest.mark.timeout(900)]

PG_ROOT = Path("/usr/lib/postgresql")
PG_TOOLS = ("initdb", "postgres", "pg_isready", "psql")
PG_USER, PG_DB = "care_prefect", "prefect"
CPU_RUNS = 4


def _pg_bin() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding every tool used here; a failure (not a skip) if none."""
    found = [b for b in PG_ROOT.glob("*/bin") if all((b / tool).is_file() for tool in PG_TOOLS)]
    if not found:
        pytest.fail(f"PostgreSQL server binaries ({', '.join(PG_TOOLS)}) not found under {PG_ROOT}/*/bin: "
                    "install them with `apt-get install postgresql` (make test-deploy-postgres does so as root)",
                    pytrace=False)
    return max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)


class Postgres:
    """A throwaway PostgreSQL server: its own data folder, 127.0.0.1 only, unix socket in that folder.

    The folder is a fresh temp folder rather than pytest's tmp_path: as root, the server runs as the ``postgres``
    user, which cannot enter pytest's root-only base folder.
    """

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.owner: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("no `postgres` system user to run PostgreSQL as (root cannot): "
                            "`apt-get install postgresql` creates it", pytrace=False)
            self.owner = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
        self.folder = Path(tempfile.mkdtemp(prefix="care-pg-"))
        self.data, self.socket_dir = self.folder / "data", self.folder / "socket"
        for path in (self.folder, self.data, self.socket_dir):
            path.mkdir(exist_ok=True)
            if self.owner:
                os.chown(path, user.pw_uid, user.pw_gid)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.url = f"postgresql+asyncpg://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{PG_DB}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        init = subprocess.run([*self.owner, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
                               "--no-sync"], cwd=self.folder, capture_output=True, text=True, timeout=300)
        assert init.returncode == 0, f"initdb: {init.stdout[-2000:]}{init.stderr[-2000:]}"
        with (self.folder / "postgres.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.owner, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
                 "-c", "fsync=off"],  # throwaway data: no need to survive a power cut
                cwd=self.folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 120
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p",
                                    str(self.port), "-U", "postgres", "-d", "postgres"], timeout=30)
            if ready.returncode == 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"PostgreSQL not ready within 120 s (exit code {self.proc.poll()})")
        self.sql(f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{self.password}'", superuser=True)
        self.sql(f"CREATE DATABASE {PG_DB} OWNER {PG_USER}", superuser=True)

    def sql(self, query: str, superuser: bool = False) -> list[list[str]]:
        """Rows of ``query`` (``|``-separated text): as Prefect's role over TCP with its password, or as the
        superuser over the unix socket."""
        where = (["-h", str(self.socket_dir), "-U", "postgres", "-d", "postgres"] if superuser
                 else ["-h", "127.0.0.1", "-U", PG_USER, "-d", PG_DB])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.password
        done = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
                               "-p", str(self.port), *where, "-c", query], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"psql {query!r}: {done.stderr[-2000:]}"
        return [line.split("|") for line in done.stdout.splitlines() if line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, stop the server processes
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self) -> str:
        log = self.folder / "postgres.log"
        return f"--- postgres\n{log.read_text(errors='replace')[-3000:]}" if log.exists() else ""


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    try:
        pg.start()
        yield pg
    except BaseException:
        print(pg.log_tail())
        raise
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def deployed(postgres, demo_root, tiny_model_dir, tmp_path_factory):
    """Prefect server on Postgres with its services (scheduler included), both pools, every deployment, and one
    worker on the gpu pool."""
    folder = tmp_path_factory.mktemp("prefect-postgres")
    # workers poll every 2 s instead of 10: less waiting, the same code path
    with prefect_stack(folder, services=True, PREFECT_API_DATABASE_CONNECTION_URL=postgres.url,
                       PREFECT_WORKER_QUERY_SECONDS="2") as stack:
        stack.env.update(CARE_DATA_ROOT=str(demo_root), CARE_RETRAIN_MODEL=str(tiny_model_dir))
        create_pools_and_deploy(stack)
        gpu_worker = stack.start("worker-gpu", "worker", "start", "--pool", "gpu", "--limit", "1", "--name", "gpu-0")
        yield SimpleNamespace(stack=stack, api=stack.env["PREFECT_API_URL"], folder=folder, data_root=demo_root,
                              model=tiny_model_dir, gpu_worker=gpu_worker)


def _ids(ids: list[str]) -> str:
    return ", ".join(f"'{i}'" for i in ids)


def _until(what: str, seconds: float, probe):
    """``probe()`` once it is truthy, polled every second; an AssertionError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := probe():
            return found
        time.sleep(1)
    raise AssertionError(f"{what}: not within {seconds} s")


def test_prefect_keeps_its_state_in_postgres(deployed, postgres):
    tables = {row[0] for row in postgres.sql("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'public'")}
    assert {"alembic_version", "deployment", "flow_run", "flow_run_state", "work_pool", "worker"} <= tables
    deployments = postgres.sql("SELECT f.name || '/' || d.name FROM deployment d JOIN flow f ON f.id = d.flow_id")
    assert sorted(row[0] for row in deployments) == ["evaluate/evaluate", "gang-node/gang-node", "pipeline/pipeline",
                                                     "preprocess/preprocess", "retrain/retrain", "rl/rl"]
    pools = postgres.sql("SELECT name, type, concurrency_limit FROM work_pool WHERE name IN ('cpu', 'gpu') "
                         "ORDER BY name")
    assert pools == [["cpu", "process", ""], ["gpu", "process", "1"]]
    assert not list((deployed.folder / "prefect").glob("*.db"))  # no SQLite database next to PREFECT_HOME


def test_the_scheduler_materialises_the_retrain_cron(deployed, postgres):
    deployment = httpx.get(f"{deployed.api}/deployments/name/retrain/retrain", timeout=10).json()
    query = ("SELECT id, to_char(expected_start_time AT TIME ZONE 'Europe/Berlin', 'ID HH24:MI') FROM flow_run "
             f"WHERE deployment_id = '{deployment['id']}' AND state_type = 'SCHEDULED' AND auto_scheduled "
             "ORDER BY expected_start_time")
    # the scheduler's default minimum is 3 future runs (PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS)
    rows = _until("3 scheduled retrain runs in Postgres", 120, lambda: (r := postgres.sql(query)) and len(r) >= 3 and r)
    assert {when for _, when in rows} == {"1 02:00"}  # ISO weekday 1 = Monday, 02:00 Berlin time
    body = {"deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
    via_api = httpx.post(f"{deployed.api}/flow_runs/filter", json=body, timeout=10).json()
    assert {r["id"] for r in via_api} >= {i for i, _ in rows}
    others = postgres.sql(f"SELECT count(*) FROM flow_run WHERE deployment_id <> '{deployment['id']}'")
    assert others == [["0"]]  # the other deployments have no schedule


def test_a_retraining_round_through_the_gpu_worker(deployed, postgres):
    stack, api = deployed.stack, deployed.api
    params = json.dumps(retrain_params(str(deployed.model), str(deployed.data_root)))
    run_id = flow_run_id(stack.run("deployment", "run", "retrain/retrain", "--param", f"config={params}"))
    [run] = wait_runs(api, [run_id], seconds=420)
    assert run["state_type"] == "COMPLETED", stack.log_tail()

    def all_logs() -> str:  # the last lines can reach the server after the state: logs are sent in batches
        text = flow_run_logs(api, run_id)
        return text if "round done at iteration 1;" in text else ""

    logs = _until("the round's last log line", 60, all_logs)
    assert "Worker 'gpu-0' submitting flow run" in logs and "continuing after iteration 0 " in logs
    ws = Workspace.at(deployed.folder / "care_home")
    checkpoints = sorted(p.name for p in (ws.run_dir("retrain-test") / "checkpoints").iterdir())
    assert checkpoints == ["iter-00000", "iter-00001"]  # the starting policy and this round's
    labels = catalog.query("select distinct label from eval_results where run_id = 'retrain-test'",
                           path=ws.catalog_path)
    assert labels == [("iter-00001",)]
    # the round and its subflows, as Postgres holds them
    rows = postgres.sql("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                        f"WHERE r.id = '{run_id}' OR r.parent_task_run_id IN "
                        f"(SELECT id FROM task_run WHERE flow_run_id = '{run_id}')")
    assert sorted(rows) == [["evaluate", "COMPLETED"], ["preprocess", "COMPLETED"], ["retrain", "COMPLETED"],
                            ["rl", "COMPLETED"]]


def test_two_workers_on_one_pool_run_each_flow_run_once(deployed, postgres, tmp_path):
    stack, api = deployed.stack, deployed.api
    small = make_demo_benchmark(tmp_path / "small", train=4, val=4, seed=1)
    names = ["cpu-0", "cpu-1"]
    for name in names:
        stack.start(f"worker-{name}", "worker", "start", "--pool", "cpu", "--limit", "1", "--name", name)

    def online() -> bool:
        workers = httpx.post(f"{api}/work_pools/cpu/workers/filter", json={}, timeout=10).json()
        return {w["name"] for w in workers if w["status"] == "ONLINE"} >= set(names)

    _until("both cpu workers online", 180, online)
    deployment = httpx.get(f"{api}/deployments/name/preprocess/preprocess", timeout=10).json()
    config = {"data_root": str(small), "annotations": ["L1"], "workers": 1}
    # all runs queued at once: a worker with --limit 1 takes one, the other worker the next
    ids = [httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                      json={"parameters": {"config": config}}, timeout=10).json()["id"] for _ in range(CPU_RUNS)]
    runs = wait_runs(api, ids, seconds=420)
    assert [r["state_type"] for r in runs] == ["COMPLETED"] * CPU_RUNS, stack.log_tail()

    # in each worker's log: the runs it claimed ("submitting"), the claims the server refused (both workers
    # polled the same run at once; the server lets one move it to PENDING), and the runs its processes executed
    # (the flow engine's "View at .../flow-run/ID" line)
    logs = {name: (stack.logs / f"worker-{name}.log").read_text(errors="replace") for name in names}
    claimed = {name: re.findall(r"submitting flow run '([0-9a-f-]{36})'", text) for name, text in logs.items()}
    refused = {name: re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text)
               for name, text in logs.items()}
    executed = {name: re.findall(r"/runs/flow-run/([0-9a-f-]{36})", text) for name, text in logs.items()}
    assert sorted(itertools.chain(*executed.values())) == sorted(ids), executed  # each run executed exactly once
    assert all(executed.values()), executed  # by both workers
    for name in names:
        assert sorted(claimed[name]) == sorted(executed[name] + refused[name]), logs[name][-3000:]
    # the state history in Postgres: claimed (PENDING, then its "Submitting" sub-state) and RUNNING once each
    history = postgres.sql("SELECT flow_run_id, string_agg(type::text || ':' || name, ',' ORDER BY timestamp) "
                           f"FROM flow_run_state WHERE flow_run_id IN ({_ids(ids)}) GROUP BY flow_run_id")
    assert sorted(run_id for run_id, _ in history) == sorted(ids)
    for _, states in history:
        types = [state.split(":")[0] for state in states.split(",")]
        assert types.count("RUNNING") == 1, states
        assert [t for t, _ in itertools.groupby(types)] == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"], states


def _flow_run_processes(run_id: str) -> set[int]:
    """Live processes of a flow run: the worker starts it with PREFECT__FLOW_RUN_ID set and children inherit it."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):  # empty for a zombie
                    found.add(int(proc.name))
            except OSError:
                pass  # gone meanwhile, or not ours
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_cancelling_a_running_round_leaves_no_process(deployed, postgres):
    stack, api = deployed.stack, deployed.api
    # far more iterations than the test waits for: the round is still training when it is cancelled
    params = json.dumps(retrain_params(str(deployed.model), str(deployed.data_root), run_name="retrain-cancel",
                                       iterations=500))
    run_id = flow_run_id(stack.run("deployment", "run", "retrain/retrain", "--param", f"config={params}"))

    def training() -> bool:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state_type"]
        assert state in {"SCHEDULED", "PENDING", "RUNNING"}, stack.log_tail()
        return state == "RUNNING" and "training samples" in flow_run_logs(api, run_id)  # preprocessing done

    _until("the round running its RL stage", 300, training)
    processes = _flow_run_processes(run_id)
    assert processes, "no process of the running flow run found"
    stack.run("flow-run", "cancel", run_id)
    [run] = wait_runs(api, [run_id], seconds=180)
    assert run["state_type"] == "CANCELLED", stack.log_tail()
    _until(f"the flow run's processes {sorted(processes)} gone", 60,
           lambda: not _flow_run_processes(run_id) and not any(map(_alive, processes)))
    assert deployed.gpu_worker.poll() is None  # the worker itself keeps running
    [[states]] = postgres.sql("SELECT string_agg(type::text, ',' ORDER BY timestamp) FROM flow_run_state "
                              f"WHERE flow_run_id = '{run_id}'")
    assert states.split(",")[-3:] == ["RUNNING", "CANCELLING", "CANCELLED"], states


def test_a_two_node_gang_gets_its_second_node_from_the_gang_node_deployment(deployed, postgres):
    """optim.nnodes 2 with local_nodes 1: the rl stage of a round starts its own node and submits a gang-node
    deployment run for the other, which a second gpu worker runs; the ranks rendezvous over c10d, the round
    completes, and the node run ends with the gang, leaving no process."""
    stack, api = deployed.stack, deployed.api
    stack.run("work-pool", "set-concurrency-limit", "gpu", "2")  # one flow run per node, two nodes
    second = stack.start("worker-gpu-1", "worker", "start", "--pool", "gpu", "--limit", "1", "--name", "gpu-1")
    try:
        params = retrain_params(str(deployed.model), str(deployed.data_root), run_name="retrain-two-nodes")
        params["rl"]["rollout"]["generation_batch_prompts"] = 1  # 2 prompts: one generation chunk per rank
        params["rl"]["optim"].update(num_processes=2, nnodes=2, local_nodes=1, rdzv_endpoint=f"127.0.0.1:{free_port()}",
                                     node_deployment="gang-node/gang-node")
        run_id = flow_run_id(stack.run("deployment", "run", "retrain/retrain", "--param",
                                       f"config={json.dumps(params)}"))
        [run] = wait_runs(api, [run_id], seconds=600)
        assert run["state_type"] == "COMPLETED", stack.log_tail()
        node_deployment = httpx.get(f"{api}/deployments/name/gang-node/gang-node", timeout=10).json()
        body = {"deployments": {"id": {"any_": [node_deployment["id"]]}}}
        [node_run] = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
        [node] = wait_runs(api, [node_run["id"]], seconds=120)
        assert node["state_type"] == "COMPLETED", stack.log_tail()
        assert node["name"].endswith("-node1") and node["parameters"]["nnodes"] == 2

        def worker_of(flow_run: str) -> str:
            logs = _until(f"the submitting worker in {flow_run}'s logs", 60,
                          lambda: re.search(r"Worker '(gpu-\d)' submitting", flow_run_logs(api, flow_run)))
            return logs.group(1)

        assert worker_of(run_id) != worker_of(node["id"])  # the second node ran on the other worker
        rl_runs = httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["rl"]}}}, timeout=10).json()
        [rl_run] = [r for r in rl_runs if r["parameters"]["config"]["run_name"] == "retrain-two-nodes"]  # the subflow
        assert "gang: 1 other node(s) submitted" in flow_run_logs(api, rl_run["id"])
        assert "gang node done" in _until("the node run's last log line", 60,
                                          lambda: (t := flow_run_logs(api, node["id"])) and "gang node done" in t
                                          and t)
        ws = Workspace.at(deployed.folder / "care_home")
        [[rows]] = catalog.query("select count(*) from stages where run_id = 'retrain-two-nodes' and "
                                 "status = 'completed' and stage in ('rollout', 'scoring', 'optimise')",
                                 path=ws.catalog_path)
        assert rows == 3
        _until("no process of either flow run left", 60,
               lambda: not _flow_run_processes(run_id) and not _flow_run_processes(node["id"]))
    finally:
        stack.stop_one(second)
        stack.run("work-pool", "set-concurrency-limit", "gpu", "1")
