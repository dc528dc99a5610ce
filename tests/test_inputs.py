"""Model inputs: padding invariance of completion logits and agreement with what generate computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from care.algo.prompt import build_messages
from care.models.inputs import (
    PromptItem,
    completion_logits,
    completion_logprobs,
    encode_prompt_completions,
    encode_prompts,
    split_completions,
)
from care.models.loading import load_model, load_processor, suppressed_token_ids

OPTIONS = ["pick up the blue marker", "pick up the green marker", "pick up the red marker",
           "pick up the yellow marker"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir), load_processor(tiny_model_dir)


def items():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    image_a = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    image_b = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    return [
        PromptItem(build_messages("What next?", OPTIONS, has_video=True), video=video, image=image_a),
        # image-only and a longer question: a different prompt length, so the batch really pads
        {"messages": build_messages("What should I do next to collect the marker the agent walks to?", OPTIONS,
                                    has_video=False), "image": image_b},
    ]


def test_prompts_are_left_padded_and_carry_the_real_fps(tiny):
    _, processor = tiny
    batch = encode_prompts(processor, items(), fps=[2.0, None])
    mask = batch["attention_mask"]
    assert mask[:, -1].all()  # left padding: every row ends with a real token
    assert (mask.sum(1) != mask.shape[1]).any()  # and one row is padded
    assert batch["second_per_grid_ts"].tolist() == [1.0]  # temporal_patch 2 / 2 fps (the processor says 2/24)
    with pytest.raises(ValueError, match="item 0: messages have 1 video placeholders but 0 video"):
        encode_prompts(processor, [PromptItem(items()[0].messages, image=items()[0].image)], fps=2.0)


def test_completion_logits_are_padding_invariant(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    completions = [[*tok.encode("<think>The agent walks to the red marker.</think><answer>C</answer>"), tok.eos_token_id],
                   tok.encode("<think>x</think><answer>A</answer>")]
    batch = encode_prompt_completions(processor, items(), completions, fps=4.0)
    p = batch["prompt_length"]
    assert batch["input_ids"].shape == (2, p + len(completions[0]))
    assert batch["completion_mask"].sum(1).tolist() == [len(c) for c in completions]
    assert (batch["input_ids"][:, p:] == batch["completion_ids"]).all()
    with torch.no_grad():
        batched = completion_logits(model, batch)
        for i, item in enumerate(items()):
            single = encode_prompt_completions(processor, [item], [completions[i]], fps=4.0)
            assert single["attention_mask"].all()  # alone: no padding at all
            alone = completion_logits(model, single)[0]
            n = len(completions[i])
            torch.testing.assert_close(batched[i, :n], alone[:n], atol=1e-4, rtol=1e-4)
        logp = completion_logprobs(model, batch)
    assert logp.shape == batch["completion_ids"].shape
    assert (logp[batch["completion_mask"] == 0] == 0).all()
    assert (logp[batch["completion_mask"] == 1] < 0).all()


def test_rescoring_matches_the_logits_generate_used(tiny):
    """M-RoPE positions in [prompt | completion] equal those during sampling (same logits step by step)."""
    model, processor = tiny
    tok = processor.tokenizer
    prompts = encode_prompts(processor, items(), fps=4.0)
    with torch.no_grad():
        out = model.generate(**prompts, max_new_tokens=12, do_sample=False, suppress_tokens=suppressed_token_ids(tok),
                             output_logits=True, return_dict_in_generate=True)
    completions = split_completions(out.sequences, prompts["input_ids"].shape[1], tok.eos_token_id)
    batch = encode_prompt_completions(processor, items(), completions, fps=4.0)
    with torch.no_grad():
        rescored = completion_logits(model, batch)
    generated = torch.stack(out.logits, dim=1)  # (b, n, v), raw logits before suppression
    for i, ids in enumerate(completions):
        n = len(ids)
        torch.testing.assert_close(rescored[i, :n], generated[i, :n], atol=1e-4, rtol=1e-4)


def test_split_completions_stops_at_first_eos():
    seqs = torch.tensor([[7, 7, 3, 2, 5, 0], [0, 7, 3, 4, 5, 6]])
    assert split_completions(seqs, 2, 2) == [[3, 2], [3, 4, 5, 6]]
    assert split_completions(seqs, 2, [4, 2]) == [[3, 2], [3, 4]]
