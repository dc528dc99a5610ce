"""Security: ``care sql`` neither writes nor reads outside the workspace's data, no pickle is written or loaded
from the workspace, and the LLM judge's API key never lands in a verdict, a record or a stored config.

(Annotation paths escaping the data root: tests/test_annotations.py, ``escapes the data root`` and the symlinked
source folder. The private Prefect server's 127.0.0.1 binding: tests/test_faults_orphans.py.)
"""

from __future__ import annotations

import contextlib
import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from care.eval.judges import JudgeItem, judge_label
from care.eval.llm_judge import LLMJudge
from care.eval_schema import LLMJudgeConfig
from care.store import catalog
from care.workspace import Workspace
from tests.cli_helpers import care_in_process as _care

PASSWD_MARK = "root:"  # the first line of /etc/passwd


@pytest.fixture
def workspace(care_home):
    ws = Workspace.at(care_home).ensure()
    catalog.execute("create table if not exists notes (x integer)", path=ws.catalog_path)
    shard = ws.rollouts_dir / "run=r" / "iteration=0" / "generated.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1, 2, 3]}), shard)
    return ws


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("care.duckdb")}


def test_explain_analyze_cannot_write_into_the_workspace(workspace, capsys):
    """EXPLAIN is allowed (a plan); EXPLAIN ANALYZE runs its statement, so it could overwrite a rollout shard."""
    shard = next(workspace.rollouts_dir.rglob("generated.parquet"))
    before = _tree(workspace.root)
    for target in (shard, workspace.runs_dir / "new.csv"):
        code, out, err = _care(capsys, "sql", f"explain analyze copy (select 42 as x) to '{target}'")
        assert code == 2 and "refused: EXPLAIN ANALYZE" in err and err.count("\n") == 1, (out, err)
        code, _, err = _care(capsys, "sql", f"/* plan */ EXPLAIN (ANALYZE) copy (select 42 as x) to '{target}'")
        assert code == 2 and "refused" in err
    assert _tree(workspace.root) == before
    code, out, _ = _care(capsys, "sql", "explain select * from notes")
    assert code == 0 and "physical_plan" in out


@pytest.mark.parametrize("query", [
    "select * from read_text('/etc/passwd')",
    "select * from read_blob('/etc/passwd')",
    "select * from read_csv('/etc/passwd', header = false)",
    "select * from glob('/etc/*')",
    "select * from read_parquet('/etc/passwd')",
    "select * from read_json('/etc/passwd')",
    "select * from read_text('{rollouts}/../../../../../etc/passwd')",
    "select * from read_text('{rollouts}/etc/passwd')",  # a symlink to /etc inside an allowed folder
    "select * from read_text('{home}/elsewhere.txt')",   # the workspace root itself is not readable
    "copy notes to '/tmp/care-escape.csv'",
    "copy (select 1) to '{runs}/x.csv'",
    "attach '/tmp/care-escape.duckdb' as other",
    "install httpfs",
    "load httpfs",
    "create secret s (type s3, key_id 'k', secret 'v')",
    "set enable_external_access = true",
    "reset lock_configuration",
    "pragma enable_profiling",
    "call duckdb_settings()",
    "insert into notes values (1)",
    "select 1; copy notes to '/tmp/care-escape.csv'",
    "select getenv('HOME')",
])
def test_file_access_outside_the_data_folders_is_refused(workspace, capsys, query):
    (workspace.rollouts_dir / "etc").symlink_to("/etc")
    (workspace.root / "elsewhere.txt").write_text(PASSWD_MARK)
    before = _tree(workspace.root)
    query = query.format(rollouts=workspace.rollouts_dir, runs=workspace.runs_dir, home=workspace.root)
    code, out, err = _care(capsys, "sql", query)
    assert code == 2, out
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert PASSWD_MARK not in out + err
    assert not Path("/tmp/care-escape.csv").exists() and not Path("/tmp/care-escape.duckdb").exists()
    assert _tree(workspace.root) == before
    code, out, _ = _care(capsys, "sql", "select count(*) as n from notes", "--format", "json")
    assert json.loads(out) == [{"n": 0}]  # the catalog is unchanged


def test_the_workspace_data_folders_stay_readable(workspace, capsys):
    shard = next(workspace.rollouts_dir.rglob("generated.parquet"))
    code, out, _ = _care(capsys, "sql", f"select sum(x) as s from read_parquet('{shard}')", "--format", "json")
    assert code == 0 and json.loads(out) == [{"s": 6}]


# ------------------------------------------------------------------------------------------------ pickle

PICKLE_LOADERS = re.compile(r"\b(pickle\.loads?|cloudpickle|dill\.|joblib\.load|torch\.load|allow_pickle\s*=\s*True)")


def test_no_code_path_loads_a_pickle():
    repo = Path(__file__).resolve().parents[1]
    found = [f"{p.relative_to(repo)}:{i}: {line.strip()}"
             for folder in ("care", "tasks", "flows") for p in sorted((repo / folder).rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if PICKLE_LOADERS.search(line)]
    assert not found, found


def test_every_persisted_prefect_result_uses_the_json_serializer():
    """A cached task persists its result and reads it back on a cache hit: that must not be a pickle."""
    import importlib

    from prefect import Task
    from prefect.serializers import JSONSerializer

    repo = Path(__file__).resolve().parents[1]
    checked = []
    for path in sorted((repo / "tasks").glob("*.py")):
        module = importlib.import_module(f"tasks.{path.stem}")
        for name, obj in vars(module).items():
            if isinstance(obj, Task) and (obj.cache_key_fn is not None or obj.persist_result):
                serializer = obj.result_serializer
                ok = serializer == "json" or isinstance(serializer, JSONSerializer)
                assert ok, f"tasks/{path.name}: task {name!r} persists its result with {serializer!r}; add **JSON_RESULTS"
                checked.append(name)
    assert "cache_shard" in checked and "rollout" in checked  # the scan saw the cached tasks


def scan_for_pickles(root: Path) -> list[str]:
    """Files under ``root`` that are pickles or Prefect results stored with another serializer than JSON."""
    bad = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        if p.suffix in {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz"}:
            bad.append(f"{p}: pickle-capable format")
            continue
        head = p.open("rb").read(4096)
        if p.suffix not in {".safetensors", ".parquet", ".duckdb", ".mp4", ".png", ".jpg", ".db"} \
                and len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
            bad.append(f"{p}: pickle header")
        if head.startswith(b'{"metadata"') and b'"serializer":{"type":"json"' not in head:
            bad.append(f"{p}: Prefect result not stored as JSON")
    return bad


def test_scan_finds_a_pickled_prefect_result(tmp_path):
    """The workspace scan used by the crash suite (tests/test_faults_crash.py) really sees a pickle."""
    (tmp_path / "r1").write_text('{"metadata":{"serializer":{"type":"pickle"}},"result":"gAWV"}')
    (tmp_path / "r2").write_bytes(b"\x80\x04\x95...")
    (tmp_path / "ok").write_text('{"metadata":{"serializer":{"type":"json"}},"result":"{}"}')
    assert sorted(Path(b.split(":")[0]).name for b in scan_for_pickles(tmp_path)) == ["r1", "r2"]


# ------------------------------------------------------------------------------------------------ secrets

SECRET = "sk-care-secret-7f3a9c"


class EchoHandler(BaseHTTPRequestHandler):
    """A judge endpoint that repeats the request's Authorization header back, in every way a server might."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        route = self.path.split("/")[1]
        if route == "unauthorized":
            status, body = 401, json.dumps({"error": f"invalid credentials {auth}"}).encode()
        elif route == "notjson":
            status, body = 200, f"echo {auth}".encode()
        else:  # a chat completion whose content is the header: not YES or NO
            status, body = 200, json.dumps({"choices": [{"message": {"content": f"key {auth}"}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)


JUDGE_HANDLER = EchoHandler  # served by the judge_server fixture (conftest.py)

ITEM = JudgeItem(completion="<think>It is a, so A.</think><answer>A</answer>", options=("a", "b", "c", "d"),
                 question="What next?")


@pytest.mark.parametrize("route", ["unauthorized", "notjson", "garbage"])
def test_judge_key_never_lands_in_a_verdict_even_when_the_endpoint_echoes_it(judge_server, monkeypatch, route):
    monkeypatch.setenv("CARE_TEST_JUDGE_KEY", SECRET)
    config = LLMJudgeConfig(base_url=f"{judge_server}/{route}/v1", model="m", api_key_env="CARE_TEST_JUDGE_KEY",
                            timeout_s=5)
    judge = LLMJudge(config)
    [verdict] = judge.judge([ITEM])
    assert verdict.consistent is None  # unjudged, with the reason recorded
    assert "Bearer" in verdict.reason  # the echo reached the reason ...
    assert SECRET not in verdict.reason  # ... but not the key
    assert SECRET not in json.dumps({"settings": dict(judge.settings), "label": judge_label(judge),
                                     "config": config.model_dump(mode="json")})
