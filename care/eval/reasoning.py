"""Reading a completion for the consistency judges: its think block, its answer letter, the option it concludes on.

Definitions (also in docs/evaluation.md):

* **think block**: the content of the first ``<think>...</think>`` (special tokens removed first).
* **answer**: the content of the first ``<answer>...</answer>`` (as in scoring), read as an option letter when it
  is exactly one of the option letters, or exactly one option's text (case and surrounding whitespace ignored);
  anything else (``"C."``, ``"maybe C"``) is not an option.
* **mentions** of an option inside the think block, found case-sensitively for letters and case-insensitively for
  texts, never inside a longer word:

  - its letter as a standalone capital (``C``, ``(C)``, ``C.``, ``option C``), except the English article: an
    ``A`` that starts a sentence and is followed by a lowercase word (``A purple marker ...``) is not a mention;
  - its full text (``pick up the purple marker``);
  - its *key*: its text without the word prefix and word suffix that ALL options share (options
    ``pick up the red marker`` / ``pick up the purple marker`` have keys ``red`` / ``purple``), so reasoning that
    names the distinguishing part of an option (``walks to the purple marker``) mentions it. No key when the
    shared parts leave nothing.

  Overlapping candidate mentions are resolved leftmost-longest, like a regex alternation: of two candidates
  starting at the same place the longer wins, and a candidate overlapping an earlier kept one is dropped. So an
  option text inside a longer option text (``red marker`` inside ``red marker and the cup``), or a letter inside
  an option text, does not count on its own.
* **concluded option**: the option of the LAST mention in the think block (reasoning ends on its conclusion).
  Known limit of this rule: negations after the conclusion (``..., so C, not D``) read as D.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from care.algo.prompt import OPTION_LETTERS
from care.algo.rewards import extract_answer, strip_special_tokens

THINK_PATTERN = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_WORD_CHAR = r"[A-Za-z0-9_'’\-]"
# The article reading of "A": at the start of the text or of a sentence, followed by a lowercase word.
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n\s*)\s*$")
_FOLLOWED_BY_WORD = re.compile(r"\s+[a-z]")


def think_block(completion: str) -> str | None:
    """Content of the first ``<think>`` tag, or None.

    >>> think_block("<think> walks to red </think><answer>A</answer>")
    ' walks to red '
    >>> think_block("<answer>A</answer>") is None
    True
    """
    match = THINK_PATTERN.search(strip_special_tokens(completion))
    return None if match is None else match.group(1)


def _normalize(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).lower()


def answer_letter(answer: str, options: Sequence[str]) -> str | None:
    """The option letter an answer-tag content denotes, or None.

    >>> opts = ["pick up the red marker", "pick up the blue marker"]
    >>> answer_letter("B", opts), answer_letter(" Pick up the RED marker ", opts), answer_letter("C", opts)
    ('B', 'A', None)
    """
    letters = OPTION_LETTERS[: len(options)]
    stripped = answer.strip()
    if stripped in letters:
        return stripped
    matches = [letter for letter, text in zip(letters, options, strict=False) if _normalize(text) == _normalize(stripped)]
    return matches[0] if len(matches) == 1 else None


def option_keys(options: Sequence[str]) -> list[str]:
    """Each option's text without the word prefix and suffix shared by all options ('' when nothing is left).

    >>> option_keys(["pick up the red marker", "pick up the light blue marker", "pick up the marker"])
    ['red', 'light blue', '']
    >>> option_keys(["open the drawer", "close the door"])
    ['open the drawer', 'close the door']
    """
    words = [_normalize(text).split() for text in options]
    if len(words) < 2:
        return [" ".join(w) for w in words]
    shortest = min(len(w) for w in words)
    prefix = 0
    while prefix < shortest and len({w[prefix] for w in words}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and len({w[-1 - suffix] for w in words}) == 1:
        suffix += 1
    return [" ".join(w[prefix : len(w) - suffix]) for w in words]


@dataclass(frozen=True)
class Mention:
    """One mention of an option in a text: the option's letter, the span, and what matched."""

    letter: str
    start: int
    end: int
    matched: str


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(word) for word in phrase.split())
    return re.compile(rf"(?<!{_WORD_CHAR}){body}(?!{_WORD_CHAR})", re.IGNORECASE)


def _letter_candidates(text: str, letters: Sequence[str]) -> list[Mention]:
    pattern = re.compile(rf"(?<!{_WORD_CHAR})([{''.join(letters)}])(?!{_WORD_CHAR})")
    found = []
    for match in pattern.finditer(text):
        is_article = (
            match.group(1) == "A"
            and _SENTENCE_START.search(text[: match.start()]) is not None
            and _FOLLOWED_BY_WORD.match(text, match.end()) is not None
        )
        if not is_article:
            found.append(Mention(match.group(1), match.start(), match.end(), match.group(1)))
    return found


def option_mentions(text: str, options: Sequence[str]) -> list[Mention]:
    """All mentions of the options in ``text``, in order, overlaps resolved leftmost-longest.

    >>> opts = ["pick up the red marker", "pick up the purple marker", "pick up the blue marker"]
    >>> [(m.letter, m.matched) for m in option_mentions("A purple marker? No, red. So A.", opts)]
    [('B', 'purple'), ('A', 'red'), ('A', 'A')]
    """
    letters = OPTION_LETTERS[: len(options)]
    candidates = _letter_candidates(text, letters)
    for letter, full, key in zip(letters, options, option_keys(options), strict=False):
        for phrase in {_normalize(full), key} - {""}:
            candidates.extend(
                Mention(letter, m.start(), m.end(), m.group(0)) for m in _phrase_pattern(phrase).finditer(text)
            )
    candidates.sort(key=lambda m: (m.start, -(m.end - m.start)))
    kept: list[Mention] = []
    for mention in candidates:
        if not kept or mention.start >= kept[-1].end:
            kept.append(mention)
    return kept


def concluded_option(think: str, options: Sequence[str]) -> Mention | None:
    """The last option mention in the reasoning (see the module docstring), or None when it names none.

    >>> opts = ["pick up the red marker", "pick up the green marker", "pick up the purple marker"]
    >>> concluded_option("The agent walks to the purple marker.", opts).letter
    'C'
    >>> concluded_option("The agent walks somewhere.", opts) is None
    True
    """
    mentions = option_mentions(think, options)
    return mentions[-1] if mentions else None


def read_answer(completion: str) -> str | None:
    """The raw first answer-tag content (special tokens removed), or None without a tag."""
    return extract_answer(strip_special_tokens(completion))
