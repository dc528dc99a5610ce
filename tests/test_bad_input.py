"""Bad input through the ``care`` command: one line on stderr naming the file and field, exit status 2, no
traceback, and no work started (no catalog row, no Prefect server)."""

from __future__ import annotations

import pytest
import yaml

from tests.cli_helpers import care_in_process as _care

GOOD = {"model": "m", "data_root": "d", "iterations": 2}


@pytest.mark.parametrize(("command", "change", "field"), [
    ("rl", {"iterationz": 3}, "iterationz: unknown key"),
    ("rl", {"iterations": "many"}, "iterations: Input should be a valid integer"),
    ("rl", {"iterations": 0}, "iterations: Input should be greater than or equal to 1"),
    ("rl", {"rollout": {"group_size": -1}}, "rollout.group_size:"),
    ("rl", {"optim": {"learning_rate": "fast"}}, "optim.learning_rate:"),
    ("sft", {"steps": -5}, "steps:"),
    ("run", {"rl": {"iterations": "x"}}, "rl.iterations:"),
    ("run", {"sft": {"stepz": 1}}, "sft.stepz"),
    ("run", {"evaluate": ["base", "later"]}, "evaluate: "),
    ("eval", {"batch_size": 0}, "batch_size:"),
])
def test_malformed_config_is_one_line_naming_the_field_before_any_work(tmp_path, care_home, capsys, command,
                                                                       change, field):
    base = {"rl": GOOD, "sft": {"model": "m", "data_root": "d"}, "run": {}, "eval": {"checkpoint": "c",
                                                                                   "data_root": "d"}}[command]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**base, **change}))
    code, _, err = _care(capsys, command, "--config", str(path))
    assert code == 2, err
    assert err.startswith(f"error: {path}: ") and field in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (care_home / "care.duckdb").exists() and not (care_home / "prefect").exists()


def test_config_that_is_not_a_mapping_or_not_yaml(tmp_path, capsys):
    for text, message in (("- a\n- b\n", "expected a mapping"), ("a: [1,\n", "not valid YAML")):
        path = tmp_path / "cfg.yaml"
        path.write_text(text)
        code, _, err = _care(capsys, "rl", "--config", str(path))
        assert code == 2 and message in err and "Traceback" not in err


def test_missing_config_file(tmp_path, capsys):
    code, _, err = _care(capsys, "rl", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: config file not found" in err


def test_model_folder_missing_files_is_named(tmp_path, tiny_model_dir):
    import shutil

    from care.errors import CareError
    from care.models.loading import load_model

    broken = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (broken / "model.safetensors").unlink()
    with pytest.raises((CareError, OSError)) as err:
        load_model(broken)
    assert str(broken) in str(err.value)


def test_care_home_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    home = tmp_path / "not-a-folder"
    home.write_text("x")
    code, _, err = _care(capsys, "--home", str(home), "sql", "select 1")
    assert code == 2 and str(home) in err and "Traceback" not in err, err
