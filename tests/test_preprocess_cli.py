"""``care preprocess --config FILE --set KEY=VALUE``, like every other stage command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from care.cli.preprocess import preprocess_config
from care.config import ConfigError
from care.data.demo import make_demo_benchmark
from tests.fault_helpers import care, sql


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return make_demo_benchmark(tmp_path_factory.mktemp("pp") / "demo", train=4, val=2, seed=0)


def _file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "preprocess.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_file_then_flags_then_set(tmp_path, small_demo):
    cfg = _file(tmp_path, {"data_root": str(small_demo), "annotations": ["train"], "workers": 1,
                           "sampling": {"nframes": 4, "max_pixels": 3136}})
    plain = preprocess_config(cfg, overrides=None, data_root=None, annotations=[], flags={})
    assert plain.annotations == ["train"] and plain.workers == 1 and plain.sampling.nframes == 4
    assert plain.data_root == str(Path(small_demo).resolve())
    flagged = preprocess_config(cfg, overrides=["sampling.nframes=6", "shard_size=8"], data_root=None,
                                annotations=["L1"], flags={"workers": 2, "codec": "jpeg"})
    assert flagged.annotations == ["L1"] and flagged.workers == 2 and flagged.shard_size == 8
    assert flagged.sampling.codec == "jpeg" and flagged.sampling.nframes == 6  # --set wins
    assert flagged.sampling.max_pixels == 3136  # kept from the file


def test_without_a_file_the_flags_are_the_options_and_every_standard_file_is_taken(small_demo):
    cfg = preprocess_config(None, overrides=["workers=3"], data_root=str(small_demo), annotations=[],
                            flags={"fps": 1.0, "workers": 2})
    assert cfg.workers == 3 and cfg.sampling.fps == 1.0
    present = sorted(p.name for p in (Path(small_demo) / "annotations").glob("*.jsonl"))
    assert len(cfg.annotations) == len(present) >= 2
    with pytest.raises(ConfigError, match="give --data-root DIR"):
        preprocess_config(None, overrides=None, data_root=None, annotations=[], flags={})
    with pytest.raises(ConfigError, match="workers"):
        preprocess_config(None, overrides=["workers=0"], data_root=str(small_demo), annotations=[], flags={})


def test_care_preprocess_with_a_config_file(tmp_path, small_demo):
    home = tmp_path / "home"
    cfg = _file(tmp_path, {"data_root": str(small_demo), "annotations": ["train"], "workers": 1,
                           "sampling": {"nframes": 4}})
    proc = care(home, "preprocess", "--config", str(cfg), "--set", "sampling.max_pixels=3136", "--shard-size", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = sql(home, "select count(*) as n from videos where status = 'ok'")
    assert rows[0]["n"] > 0
    bad = care(home, "preprocess", "--config", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and "config file not found" in bad.stderr
