"""The SEED-Bench-R1 prompt: one versioned template, and the chat messages built from it.

Input order in the user turn is fixed by the benchmark: video (if any), then the current-observation image,
then the text. Change ``PROMPT_TEMPLATE`` only together with ``PROMPT_VERSION``: the version is recorded with
every rollout and evaluation so numbers from different prompts are never mixed silently.
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPT_VERSION = "seedbench-r1-v1"

INSTRUCTION = (
    "Think step by step inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags. The answer must be only the single option letter (A, B, C or D)."
)

PROMPT_TEMPLATE = "{question}\nOptions:\n{options}{instruction}"

OPTION_LETTERS = ("A", "B", "C", "D")


def format_options(options: Sequence[str]) -> str:
    """``"A. first\\nB. second\\n..."`` with a trailing newline.

    >>> format_options(["go left", "go right"])
    'A. go left\\nB. go right\\n'
    """
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options, got {len(options)}")
    return "".join(f"{letter}. {text}\n" for letter, text in zip(OPTION_LETTERS, options, strict=False))


def build_prompt_text(question: str, options: Sequence[str]) -> str:
    """The user text: question, lettered options, then the reasoning/answer instruction.

    >>> print(build_prompt_text("What next?", ["a", "b", "c", "d"]))
    What next?
    Options:
    A. a
    B. b
    C. c
    D. d
    Think step by step inside <think> </think> tags, then give the final answer inside <answer> </answer> tags. The answer must be only the single option letter (A, B, C or D).
    """
    return PROMPT_TEMPLATE.format(question=question.strip(), options=format_options(options), instruction=INSTRUCTION)


def build_messages(question: str, options: Sequence[str], *, has_video: bool, has_image: bool = True) -> list[dict]:
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
    content.append({"type": "text", "text": build_prompt_text(question, options)})
    return [{"role": "user", "content": content}]
