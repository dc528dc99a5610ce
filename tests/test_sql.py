"""``care sql``: read-only answers from the catalog and the frames view; everything that writes is refused."""

from __future__ import annotations

import json

import pytest

from care.media import FrameCache, FrameSampling
from care.media.synth import write_video
from care.store import media
from care.store.sql import SqlError, run_query
from care.workspace import Workspace
from tests.cli_helpers import care_in_process as _care


@pytest.fixture
def workspace(care_home, tmp_path):
    ws = Workspace.at(care_home).ensure()
    cache = FrameCache(ws.frame_cache_dir, FrameSampling())
    results = [cache.put(write_video(tmp_path / "a.mp4"), "video").as_dict(),
               cache.put(tmp_path / "gone.mp4", "video").as_dict()]
    media.record_media(results, data_root=tmp_path, run_id="r1", path=ws.catalog_path)
    media.refresh_frames_view(ws.frame_cache_dir, path=ws.catalog_path)
    return ws


def test_answers_the_status_query_in_each_format(workspace, capsys):
    code, out, _ = _care(capsys, "sql", "select status, count(*) as n from videos group by 1 order by 1")
    assert code == 0 and out.split("\n")[0].split() == ["status", "n"]
    assert out.split("\n")[2].split() == ["ok", "1"] and out.split("\n")[3].split() == ["quarantined", "1"]
    _, out, _ = _care(capsys, "sql", "select status, reason from videos order by 1", "--format", "csv")
    assert out.strip().split("\n") == ["status,reason", "ok,", "quarantined,missing file"]
    _, out, _ = _care(capsys, "sql", "select count(*) as n, count(distinct cache_key) as k from frames",
                     "--format", "json")
    assert json.loads(out) == [{"n": 6, "k": 1}]  # the frames view reads the cache under external access off


@pytest.mark.parametrize(("query", "message"), [
    ("insert into rejects values ('x', 'r', 'f', 1, 'why', now())", "refused: INSERT"),
    ("delete from videos", "refused: DELETE"),
    ("create table t (x int)", "refused: CREATE"),
    ("copy videos to 'out.csv'", "refused: COPY"),
    ("attach 'other.duckdb'", "refused: ATTACH"),
    ("install httpfs", "refused: LOAD"),  # DuckDB parses INSTALL as a LOAD statement
    ("load httpfs", "refused: LOAD"),
    ("set enable_external_access = true", "refused: SET"),
    ("select 1; select 2", "exactly one statement"),
    ("select * from read_csv('/etc/passwd')", "file system operations are disabled"),
    ("select * from no_such_table", "SQL error: Catalog Error"),
])
def test_refusals_are_one_line_errors(workspace, capsys, query, message):
    code, _, err = _care(capsys, "sql", query)
    assert code == 2 and message in err and err.count("\n") == 1
    assert run_query("select count(*) from videos", catalog=workspace.catalog_path)  # nothing changed


def test_traversal_out_of_the_cache_is_refused(workspace):
    escape = f"{workspace.frame_cache_dir}/../../../../etc/passwd"
    with pytest.raises(SqlError, match="disabled by configuration"):
        run_query(f"select * from read_csv('{escape}')", catalog=workspace.catalog_path,
                  allowed_dirs=[workspace.frame_cache_dir])


def test_no_catalog_yet(care_home, capsys):
    code, _, err = _care(capsys, "sql", "select 1")
    assert code == 2 and "no catalog yet" in err
