"""Shared fixtures.

Every test runs with a temporary ``CARE_HOME`` and offline Hugging Face settings. Tests that run real Prefect
flows use the session-wide ``prefect_harness`` fixture (one ephemeral server for the whole session, a temp
PREFECT_HOME and result storage); most tests call ``task.fn()`` or ``care`` directly instead.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(autouse=True)
def care_home(tmp_path, monkeypatch):
    """A fresh workspace root per test."""
    home = tmp_path / "care_home"
    monkeypatch.setenv("CARE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One ephemeral Prefect server for the whole test session (start-up costs 20-40 s)."""
    prefect_home = tmp_path_factory.mktemp("prefect_home")
    results = tmp_path_factory.mktemp("prefect_results")
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_HOME", str(prefect_home))
    mp.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(results))
    mp.setenv("PREFECT_LOGGING_TO_API_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    mp.undo()
