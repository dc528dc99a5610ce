"""The llm judge against a real OpenAI-compatible HTTP server on 127.0.0.1 (the ``judge_server`` fixture).

The server's routes behave like a good judge, a garbage-talking one, a non-JSON one, one that does not answer
until the test has seen the client time out, a broken one (HTTP 500) and one that hangs up mid-reply. The good
route really reads the prompt: it answers YES iff the reasoning ends with the letter of the final answer, so a
wrong prompt would give wrong verdicts.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

from care.errors import CareError
from care.eval.consistency import summarize_consistency
from care.eval.judges import ConsistencyJudge, JudgeItem, judge_label
from care.eval.llm_judge import (
    LLM_JUDGE_PROMPT_VERSION,
    LLM_JUDGE_SYSTEM,
    LLMJudge,
    build_judge_messages,
    parse_verdict,
)
from care.eval_schema import LLMJudgeConfig

OPTIONS = ("pick up the red marker", "pick up the green marker", "pick up the purple marker", "pick up the blue marker")
SECRET = "sk-test-0123456789"
# set by the test once its requests have timed out: until then the slow route answers nothing
SLOW_RELEASE = threading.Event()


class JudgeHandler(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up (the timeout route)
            self.wfile.write(body)

    def _completion(self, content: str) -> bytes:
        return json.dumps({"id": "x", "object": "chat.completion",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                        "finish_reason": "stop"}]}).encode()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        route = self.path.split("/")[1]
        type(self).received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if not self.path.endswith("/v1/chat/completions"):
            self._reply(404, b'{"error": "not found"}')
        elif route == "good":
            user = body["messages"][-1]["content"]
            reasoning = re.search(r"Reasoning:\n(.*?)\n\nFinal answer: (\w)", user, re.DOTALL)
            supported = reasoning.group(1).rstrip(".").endswith(reasoning.group(2))
            self._reply(200, self._completion(" YES\n" if supported else "No."))
        elif route == "garbage":
            self._reply(200, self._completion("Well, the reasoning mostly supports it."))
        elif route == "notjson":
            self._reply(200, b"<html>proxy error</html>", "text/html")
        elif route == "cutoff":  # promises more bytes than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.wfile.flush()
            self.close_connection = True
        elif route == "slow":
            SLOW_RELEASE.wait(120)
            self._reply(200, self._completion("YES"))
        else:
            self._reply(500, b'{"error": "CUDA out of memory"}')


JUDGE_HANDLER = JudgeHandler  # served by the judge_server fixture (conftest.py)


def judge_at(base: str, route: str, **options) -> LLMJudge:
    return LLMJudge(LLMJudgeConfig(base_url=f"{base}/{route}/v1/", model="judge-model", **options))


def item(reasoning: str, answer: str) -> JudgeItem:
    return JudgeItem(f"<think>{reasoning}</think><answer>{answer}</answer>", OPTIONS, question="What next?")


def test_good_endpoint_gives_verdicts_and_sends_the_documented_request(judge_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    JudgeHandler.received.clear()
    judge = judge_at(judge_server, "good", api_key_env="JUDGE_KEY", max_concurrency=3)
    items = [
        item("The agent walks to the purple marker, so C.", "C"),
        item("The agent walks to the purple marker, so C.", "B"),
        item("It goes to the red one: A", "A"),
        JudgeItem("<answer>C</answer>", OPTIONS),  # no think block: never sent
        JudgeItem("<think>so C</think>", OPTIONS),  # no answer: never sent
    ]
    verdicts = judge.judge(items)
    assert [v.consistent for v in verdicts] == [True, False, True, None, None]
    assert [v.code for v in verdicts] == ["judged", "judged", "judged", "no_think", "no_answer"]
    assert len(JudgeHandler.received) == 3
    request = JudgeHandler.received[0]
    assert request["path"].startswith("/good/v1/chat/completions")
    assert request["auth"] == f"Bearer {SECRET}"
    body = request["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-model", 0.0, 5)
    assert body["messages"][0] == {"role": "system", "content": LLM_JUDGE_SYSTEM}
    user = body["messages"][1]["content"]
    assert "What next?" in user and "C. pick up the purple marker" in user and "Reply with exactly one word" in user
    # the key is never stored on the judge nor shown in its label, settings or verdicts
    assert SECRET not in repr(vars(judge)) + repr(vars(judge.config)) + judge_label(judge)
    assert all(SECRET not in v.reason for v in verdicts)
    summary = summarize_consistency(judge, verdicts)
    assert (summary.judge, summary.judge_version) == ("llm", LLM_JUDGE_PROMPT_VERSION)
    assert (summary.n_judged, summary.n_unjudged, summary.rate) == (3, 2, pytest.approx(2 / 3))
    assert isinstance(judge, ConsistencyJudge)


def test_no_key_variable_means_no_authorization_header(judge_server):
    JudgeHandler.received.clear()
    verdict = judge_at(judge_server, "good").judge([item("so D", "D")])[0]
    assert verdict.consistent is True
    assert JudgeHandler.received[0]["auth"] is None


@pytest.mark.parametrize(
    ("route", "code", "in_reason"),
    [
        ("garbage", "unparseable", "mostly supports"),
        ("notjson", "bad_response", "proxy error"),
        ("error", "http_error", "HTTP 500"),
        ("cutoff", "connection_failed", "IncompleteRead"),
    ],
)
def test_bad_endpoints_leave_items_unjudged_with_the_reason(judge_server, route, code, in_reason):
    verdicts = judge_at(judge_server, route, max_concurrency=1).judge([item("so C", "C"), item("so B", "B")])
    assert [(v.consistent, v.code) for v in verdicts] == [(None, code)] * 2
    assert in_reason in verdicts[0].reason


def test_slow_endpoint_times_out_and_the_breaker_skips_the_rest(judge_server):
    judge = judge_at(judge_server, "slow", timeout_s=0.2, max_concurrency=1, max_consecutive_failures=2)
    SLOW_RELEASE.clear()
    try:  # the route answers only after the judge call has returned: a timeout whatever the scheduling
        verdicts = judge.judge([item("so C", "C")] * 4)
    finally:
        SLOW_RELEASE.set()
    assert [v.code for v in verdicts] == ["timeout", "timeout", "skipped", "skipped"]
    assert all(v.consistent is None for v in verdicts)
    assert "0.2 s" in verdicts[0].reason


def test_breaker_resets_per_call_and_on_success(judge_server):
    judge = judge_at(judge_server, "error", max_concurrency=1, max_consecutive_failures=2)
    assert [v.code for v in judge.judge([item("so C", "C")] * 3)] == ["http_error", "http_error", "skipped"]
    assert [v.code for v in judge.judge([item("so C", "C")])] == ["http_error"]  # a new call starts afresh


def test_unreachable_endpoint():
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    verdict = LLMJudge(LLMJudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m")).judge(
        [item("so C", "C")]
    )[0]
    assert (verdict.consistent, verdict.code) == (None, "unreachable")


def test_missing_key_variable_is_a_clear_user_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(CareError, match=r"NO_SUCH_JUDGE_KEY \(api_key_env\) is not set"):
        LLMJudge(LLMJudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_JUDGE_KEY"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("YES", True), ("yes", True), (" Yes. ", True), ("NO", False), ("no.\n", False), ("Yes, it does", None),
     ("YES NO", None), ("Y", None), ("yes..", None), ("", None), ("<think>hm</think>YES", None)],
)
def test_strict_verdict_parsing(text, expected):
    assert parse_verdict(text) is expected


def test_prompt_lists_options_and_marks_missing_question():
    messages = build_judge_messages("", OPTIONS, "  reasoning here ", "B")
    user = messages[1]["content"]
    assert "Question:\n(not given)" in user
    assert "A. pick up the red marker\nB. pick up the green marker\n" in user
    assert "Reasoning:\nreasoning here\n\nFinal answer: B" in user
