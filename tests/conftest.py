"""Shared fixtures.

Every test runs with a temporary ``CARE_HOME`` and offline Hugging Face settings. Tests that run real Prefect
flows use the session-wide ``prefect_harness`` fixture (one ephemeral server for the whole session, a temp
PREFECT_HOME and result storage); most tests call ``task.fn()`` or ``care`` directly instead. ``judge_server`` is
an OpenAI-compatible judge endpoint on 127.0.0.1 whose replies the test module defines.
"""

from __future__ import annotations

import os
import threading
from http.server import ThreadingHTTPServer

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


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo benchmark in the SEED-Bench-R1 layout (64 train rows, 32 per level), built once."""
    from care.data.demo import make_demo_benchmark

    return make_demo_benchmark(tmp_path_factory.mktemp("demo") / "demo", train=64, val=32, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, demo_root):
    """The tiny offline Qwen2.5-VL (tokenizer trained on the demo set's text), saved once per session."""
    from care.data.demo import benchmark_corpus, demo_corpus
    from care.models.tiny import make_tiny_model

    corpus = benchmark_corpus(demo_root) + demo_corpus()
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", corpus=corpus, seed=0)


@pytest.fixture(scope="module")
def judge_server(request):
    """Base URL of a stdlib HTTP server on 127.0.0.1, in a thread, answering with the requesting module's
    ``JUDGE_HANDLER`` (a ``BaseHTTPRequestHandler`` subclass); one per module, shut down after it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), request.module.JUDGE_HANDLER)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)
