"""``llm`` consistency judge: asks an OpenAI-compatible chat-completions endpoint (e.g. a vLLM server).

For each item with a think block and an option answer (the same items the ``rule`` judge reads, see
:func:`care.eval.judges.read_for_judging`), it sends :data:`LLM_JUDGE_PROMPT` (versioned by
:data:`LLM_JUDGE_PROMPT_VERSION`) with temperature 0 and parses the reply strictly: ``YES`` or ``NO``, case
ignored, surrounding whitespace and one trailing period allowed, nothing else. Anything that goes wrong for one
item - a timeout, an HTTP error, an unreachable endpoint, a reply that is not JSON of the chat-completions shape,
a reply that is not one of the two words - makes that item unjudged with the reason; the judge never raises for
it. After ``max_consecutive_failures`` transport failures in a row the remaining items are skipped (unjudged)
instead of waiting out one timeout each.

The API key is read from the environment variable named by ``api_key_env`` at each request: it is never stored on
the judge, in its settings, its label or any verdict. Only the standard library is used for HTTP; the connection
is direct (proxy environment variables are ignored), and ``timeout_s`` bounds each socket operation.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from care.algo.prompt import format_options
from care.errors import CareError
from care.eval.judges import JUDGED, JudgeItem, Verdict, read_for_judging, unjudged
from care.eval_schema import LLMJudgeConfig

LLM_JUDGE_PROMPT_VERSION = "consistency-judge-v1"

LLM_JUDGE_SYSTEM = (
    "You check multiple-choice solutions. You judge only whether the reasoning supports the final answer, "
    "not whether the answer is correct."
)

# Change together with LLM_JUDGE_PROMPT_VERSION: the version is part of the judge's label and of every record.
LLM_JUDGE_PROMPT = (
    "Question:\n{question}\n\n"
    "Options:\n{options}\n"
    "Reasoning:\n{reasoning}\n\n"
    "Final answer: {answer}\n\n"
    "Does the reasoning support the final answer, that is, does the reasoning lead to this option rather than "
    "to another one or to none? Reply with exactly one word: YES or NO."
)

VERDICT_PATTERN = re.compile(r"\s*(yes|no)\.?\s*", re.IGNORECASE)

TIMEOUT, HTTP_ERROR, UNREACHABLE, CONNECTION_FAILED, BAD_RESPONSE, UNPARSEABLE, SKIPPED = (
    "timeout", "http_error", "unreachable", "connection_failed", "bad_response", "unparseable", "skipped",
)


def parse_verdict(text: str) -> bool | None:
    """Strict reading of the judge's reply: True for YES, False for NO, None for anything else.

    >>> parse_verdict("YES"), parse_verdict(" no.\\n"), parse_verdict("Yes, because"), parse_verdict("")
    (True, False, None, None)
    """
    match = VERDICT_PATTERN.fullmatch(text)
    return None if match is None else match.group(1).lower() == "yes"


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read()[:120].decode(errors="replace").strip()
    except (OSError, http.client.HTTPException):
        return "(no body)"


def build_judge_messages(question: str, options: Sequence[str], reasoning: str, answer: str) -> list[dict]:
    """The chat messages sent for one item (system + user)."""
    user = LLM_JUDGE_PROMPT.format(
        question=question.strip() or "(not given)", options=format_options(options),
        reasoning=reasoning.strip(), answer=answer,
    )
    return [{"role": "system", "content": LLM_JUDGE_SYSTEM}, {"role": "user", "content": user}]


class LLMJudge:
    """``llm``: consistent iff the judge model answers YES to :data:`LLM_JUDGE_PROMPT`."""

    name = "llm"
    version = LLM_JUDGE_PROMPT_VERSION

    def __init__(self, config: LLMJudgeConfig) -> None:
        if config.api_key_env is not None and not os.environ.get(config.api_key_env):
            raise CareError(
                f"llm judge: environment variable {config.api_key_env} (api_key_env) is not set; "
                "export the API key there, or set api_key_env to null for an endpoint without a key"
            )
        self.config = config
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._lock = threading.Lock()
        self._failures_in_row = 0

    @property
    def settings(self) -> Mapping[str, str | float]:
        return {"model": self.config.model}

    def _post(self, messages: list[dict]) -> bytes:
        body = {"model": self.config.model, "messages": messages, "temperature": 0.0,
                "max_tokens": self.config.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ.get(self.config.api_key_env, '')}"
        request = urllib.request.Request(
            self.config.base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
            headers=headers, method="POST",
        )
        with self._opener.open(request, timeout=self.config.timeout_s) as response:
            return response.read()

    def _ask(self, messages: list[dict]) -> Verdict:
        """One request; every failure becomes an unjudged verdict (transport failures feed the breaker)."""
        try:
            raw = self._post(messages)
        except urllib.error.HTTPError as exc:
            return self._failed(HTTP_ERROR, f"endpoint answered HTTP {exc.code}: {_error_body(exc)}")
        except TimeoutError:
            return self._failed(TIMEOUT, f"no reply within {self.config.timeout_s} s")
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return self._failed(TIMEOUT, f"no connection within {self.config.timeout_s} s")
            return self._failed(UNREACHABLE, f"endpoint unreachable: {exc.reason}")
        except (OSError, http.client.HTTPException) as exc:  # reset or cut off mid-reply, and the like
            return self._failed(CONNECTION_FAILED, f"connection failed: {exc!r}")
        with self._lock:
            self._failures_in_row = 0
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return unjudged(BAD_RESPONSE, f"reply is not a chat completion ({exc!r}): {raw[:80]!r}")
        verdict = parse_verdict(content)
        if verdict is None:
            return unjudged(UNPARSEABLE, f"reply is not YES or NO: {content[:80]!r}")
        return Verdict(verdict, JUDGED, f"judge model answered {content.strip()!r}")

    def _failed(self, code: str, reason: str) -> Verdict:
        with self._lock:
            self._failures_in_row += 1
        return unjudged(code, reason)

    def judge_one(self, item: JudgeItem) -> Verdict:
        read = read_for_judging(item)
        if isinstance(read, Verdict):
            return read
        with self._lock:
            tripped = self._failures_in_row >= self.config.max_consecutive_failures
        if tripped:
            return unjudged(SKIPPED, f"skipped: the endpoint failed {self.config.max_consecutive_failures} times in a row")
        think, answer = read
        return self._redacted(self._ask(build_judge_messages(item.question, item.options, think, answer)))

    def _redacted(self, verdict: Verdict) -> Verdict:
        """The verdict with the API key cut out of its reason (an endpoint may echo the request's header)."""
        key = os.environ.get(self.config.api_key_env or "", "")
        if not key or key not in verdict.reason:
            return verdict
        return Verdict(verdict.consistent, verdict.code, verdict.reason.replace(key, "<api key>"))

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        with self._lock:
            self._failures_in_row = 0
        if self.config.max_concurrency == 1 or len(items) <= 1:
            return [self.judge_one(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            return list(pool.map(self.judge_one, items))
