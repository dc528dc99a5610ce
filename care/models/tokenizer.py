"""A byte-level BPE tokenizer trained from scratch, with the Qwen2.5-VL special tokens and chat template.

Used only by the offline tiny model (``care.models.tiny``): a real checkpoint brings its own tokenizer. The
special tokens and the chat template follow Qwen2.5-VL's, so code written against the tiny model (placeholder
tokens, ``<|im_end|>`` as EOS, ``apply_chat_template``) runs unchanged on ``Qwen/Qwen2.5-VL-7B-Instruct``.
One difference: no default system turn is inserted (it would triple the tiny prompts for no benefit).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

SPECIAL_TOKENS = (
    PAD_TOKEN, "<|im_start|>", EOS_TOKEN, VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN,
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_pad|>",
)
"""Ids 0..13 in this order (the BPE trainer puts special tokens first)."""

# Qwen-style chat template: "<|im_start|>role\n...<|im_end|>\n"; a video item becomes
# <|vision_start|><|video_pad|><|vision_end|> and the processor expands the pad to one token per merged patch.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Always part of the training text, so the tags and letters get compact tokens whatever the corpus.
BASE_CORPUS = (
    "<think> </think> <answer> </answer>",
    "<think>...</think><answer>A</answer>", "<answer>B</answer>", "<answer>C</answer>", "<answer>D</answer>",
    "Options:\nA. \nB. \nC. \nD. \n", "user\n", "assistant\n", "system\n",
)


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` (+ ``BASE_CORPUS``) and wrap it as a HF fast tokenizer.

    Deterministic for the same corpus. A small corpus saturates below ``vocab_size`` (the demo's: ~450 tokens).
    Left padding, EOS ``<|im_end|>``, PAD ``<|endoftext|>``.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, whatever the corpus
    )
    bpe.train_from_iterator([*BASE_CORPUS, *corpus], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN,
                              "vision_start_token": VISION_START, "vision_end_token": VISION_END},
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
