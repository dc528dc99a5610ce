"""The SEED-Bench-R1 prompt: versioned templates, and the chat messages built from them.

Input order in the user turn is fixed by the benchmark: video (if any), then the current-observation image,
then the text. Templates live in one registry, ``TEMPLATES``, keyed by (name, version); a name picks the
template per purpose (``prompt_template(name, purpose)``, purpose ``train`` or ``eval``):

* ``care`` (default): the short instruction below, the same for training and evaluation.
* ``reference``: the official GRPO-CARE code's text (TencentARC/GRPO-CARE, commit b0628fc), reproduced exactly:
  the question joined directly to ``"Options:"``, then the long "pondering deeply" instruction and the
  single-letter request. Its training (``src/r1-v/src/open_r1/grpo.py``) and evaluation
  (``src/eval_bench.py``) wordings differ: training asks for reasoning "between the <think> </think> tags",
  evaluation "between the <think> and </think> tags" (the same for the answer tags).
* one per transfer benchmark (``mvbench``, ``videomme``, ``mmvu``, ``vsibench``, ``tempcompass``,
  ``videommmu``;
  ``care.data.benchmarks``), evaluation only: the
  reference code's general-video evaluation prompt (``src/eval_bench.py``, ``general_video_bench`` mode), whose
  text for a multiple-choice row is the ``reference`` evaluation text (question, ``"Options:"``, one ``"A. ..."``
  line per option, the instruction and the single-letter request). Each benchmark has its own entry so every
  result row names the benchmark whose prompt built it, and a benchmark's wording can change on its own.

Never edit a registered template: add a new version. The template id (``name@version``) is recorded with every
rollout and evaluation row, and the scoring and update stages rebuild each rollout's prompt from it, so numbers
from different prompts are never mixed silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PROMPT_VERSION = "seedbench-r1-v1"
"""Version of the ``care`` template."""

INSTRUCTION = (
    "Think step by step inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags. The answer must be only the single option letter (A, B, C or D)."
)

PROMPT_TEMPLATE = "{question}\nOptions:\n{options}" + INSTRUCTION

OPTION_LETTERS = tuple("ABCDEFGHIJ")
"""Option letters; SEED-Bench-R1 rows have four options, transfer benchmarks up to ten."""

TRANSFER_BENCHMARKS = ("mvbench", "videomme", "mmvu", "vsibench", "tempcompass", "videommmu")
"""Transfer benchmarks with an evaluation template of their own (``care.data.benchmarks`` reads them)."""
TRANSFER_VERSION = "b0628fc-general-eval"

PromptName = Literal["care", "reference"]  # for evaluation also a TRANSFER_BENCHMARKS name
Purpose = Literal["train", "eval"]

_REFERENCE_THINKING = (
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
)
_REFERENCE_LETTER = " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
_REFERENCE_TRAIN = (_REFERENCE_THINKING + "Provide your detailed reasoning between the <think> </think> tags, and then "
                    "give your final answer between the <answer> </answer> tags." + _REFERENCE_LETTER)
_REFERENCE_EVAL = (_REFERENCE_THINKING + "Provide your detailed reasoning between the <think> and </think> tags, and "
                   "then give your final answer between the <answer> and </answer> tags." + _REFERENCE_LETTER)


@dataclass(frozen=True)
class PromptTemplate:
    """One user-text template: ``text`` with ``{question}`` and ``{options}`` (``format_options``) fields.

    ``strip_question``: strip the question's surrounding whitespace first (``care``; the reference code joins
    the annotation's text as it is).
    """

    name: str
    version: str
    text: str
    strip_question: bool = True

    @property
    def template_id(self) -> str:
        """``name@version``: what rollout and evaluation rows record."""
        return f"{self.name}@{self.version}"

    def render(self, question: str, options: Sequence[str]) -> str:
        q = question.strip() if self.strip_question else question
        return self.text.format(question=q, options=format_options(options))


TEMPLATES: dict[tuple[str, str], PromptTemplate] = {
    (t.name, t.version): t for t in (
        PromptTemplate("care", PROMPT_VERSION, PROMPT_TEMPLATE),
        # question + "Options:\n" + "A. ..\nB. ..\nC. ..\nD. ..\n", then QUESTION_TEMPLATE's "{Question}\n"
        # newline, the instruction and TYPE_TEMPLATE["multiple choice"] (grpo.py lines 251-318)
        PromptTemplate("reference", "b0628fc-train", "{question}Options:\n{options}\n" + _REFERENCE_TRAIN,
                       strip_question=False),
        # eval_bench.py lines 16-48: the same layout with the evaluation wording
        PromptTemplate("reference", "b0628fc-eval", "{question}Options:\n{options}\n" + _REFERENCE_EVAL,
                       strip_question=False),
        # eval_bench.py, general_video_bench: problem + "Options:\n" + each "A. ..." option + "\n", then
        # QUESTION_TEMPLATE and TYPE_TEMPLATE["multiple choice"]: the reference evaluation text
        *(PromptTemplate(name, TRANSFER_VERSION, "{question}Options:\n{options}\n" + _REFERENCE_EVAL,
                         strip_question=False) for name in TRANSFER_BENCHMARKS),
    )
}

CURRENT: dict[tuple[str, str], str] = {
    ("care", "train"): PROMPT_VERSION, ("care", "eval"): PROMPT_VERSION,
    ("reference", "train"): "b0628fc-train", ("reference", "eval"): "b0628fc-eval",
    **{(name, "eval"): TRANSFER_VERSION for name in TRANSFER_BENCHMARKS},
}
"""(name, purpose) -> the version a new run or evaluation uses."""

DEFAULT_TEMPLATE = TEMPLATES[("care", PROMPT_VERSION)]


def prompt_template(name: str = "care", purpose: str = "train") -> PromptTemplate:
    """The template a prompt option (``care`` | ``reference``) selects for ``purpose`` (``train`` | ``eval``).

    >>> prompt_template("reference", "eval").template_id
    'reference@b0628fc-eval'
    """
    try:
        return TEMPLATES[(name, CURRENT[(name, purpose)])]
    except KeyError:
        names = sorted({n for n, _ in CURRENT})
        raise ValueError(f"prompt {name!r} for {purpose!r}: expected a name in {names} and purpose train or eval"
                         ) from None


def template_by_id(template_id: str) -> PromptTemplate:
    """The registered template of a recorded id (``name@version``).

    >>> template_by_id("care@seedbench-r1-v1") is DEFAULT_TEMPLATE
    True
    """
    name, _, version = template_id.partition("@")
    try:
        return TEMPLATES[(name, version)]
    except KeyError:
        known = sorted(t.template_id for t in TEMPLATES.values())
        raise ValueError(f"prompt template {template_id!r} is not registered (known: {known})") from None


def format_options(options: Sequence[str]) -> str:
    """``"A. first\\nB. second\\n..."`` with a trailing newline.

    >>> format_options(["go left", "go right"])
    'A. go left\\nB. go right\\n'
    """
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options, got {len(options)}")
    return "".join(f"{letter}. {text}\n" for letter, text in zip(OPTION_LETTERS, options, strict=False))


def build_prompt_text(question: str, options: Sequence[str], template: PromptTemplate = DEFAULT_TEMPLATE) -> str:
    """The user text of ``template`` (default ``care``): question, lettered options, then the instruction.

    >>> print(build_prompt_text("What next?", ["a", "b", "c", "d"]))
    What next?
    Options:
    A. a
    B. b
    C. c
    D. d
    Think step by step inside <think> </think> tags, then give the final answer inside <answer> </answer> tags. The answer must be only the single option letter (A, B, C or D).
    """
    return template.render(question, options)


def build_messages(question: str, options: Sequence[str], *, has_video: bool, has_image: bool = True,
                   template: PromptTemplate = DEFAULT_TEMPLATE) -> list[dict]:
    """Chat messages for a Qwen-VL chat template: [video], [image], text, in that order.

    The visual items are placeholders; the frames and the image are passed to the processor separately.

    >>> [c["type"] for c in build_messages("q", ["a", "b", "c", "d"], has_video=True)[0]["content"]]
    ['video', 'image', 'text']
    >>> [c["type"] for c in build_messages("q", ["a", "b", "c", "d"], has_video=False)[0]["content"]]
    ['image', 'text']
    """
    content: list[dict] = []
    if has_video:
        content.append({"type": "video"})
    if has_image:
        content.append({"type": "image"})
    content.append({"type": "text", "text": build_prompt_text(question, options, template)})
    return [{"role": "user", "content": content}]
