"""Answer span in token space and the reference likelihood on the tiny Qwen2.5-VL (real from_pretrained model,
real processor, video + image inputs, left-padded prompts of different lengths, right-padded completions):
answer-position-only scoring equals the naive full-logits computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from care.algo.answer_span import answer_token_mask, answer_token_masks
from care.algo.likelihood import answer_likelihood, selective_log_softmax, token_log_probs
from care.algo.prompt import build_messages
from care.models.inputs import encode_prompt_completions, model_inputs
from care.models.loading import load_model, load_processor
from care.models.tiny import make_tiny_model

CORPUS = [
    "<think>The agent walks to the purple marker.</think><answer>C</answer>",
    "The agent walks to a marker. What should it do next?",
    "pick up the red marker",
] * 10

COMPLETIONS = [
    "<think>The agent walks to the red marker.</think><answer>B</answer><|im_end|>",
    "<think>first</think><answer> C </answer> no, <answer>D</answer><|im_end|>",
    "<think>I do not know</think><|im_end|>",
    "<think>x</think>\n<answer>A</answer><|im_end|>",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus=CORPUS, seed=0)
    return load_model(folder).eval(), load_processor(folder)


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor = tiny
    rng = np.random.default_rng(0)
    frames = lambda: rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)  # noqa: E731
    image = lambda: rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)  # noqa: E731
    options = ["pick up the red marker", "go left", "wait", "open the door"]
    items = [
        {"messages": build_messages("What should it do next?", options, has_video=True), "video": frames(), "image": image()},
        {"messages": build_messages("The agent walks. Next?", options, has_video=False), "image": image()},
        {"messages": build_messages("What next?", options, has_video=True), "video": frames(), "image": image()},
        {"messages": build_messages("A much longer question about the agent and the marker?", options, has_video=True),
         "video": frames(), "image": image()},
    ]
    tok = processor.tokenizer
    completion_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in COMPLETIONS]
    return encode_prompt_completions(processor, items, completion_ids, fps=2.0)


def _targets(batch, mask_c):
    b, p = batch["input_ids"].shape[0], batch["prompt_length"]
    return torch.cat([torch.zeros(b, p, dtype=torch.bool), mask_c], dim=1)


def _naive_logp(model, batch, temperature=1.0):
    """log p(token_j | tokens_<j) [b, t] from the full [b, t, v] logits (column 0 is 0)."""
    with torch.no_grad():
        logits = model(**model_inputs(batch), use_cache=False).logits.float() / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros(logp.shape[0], 1), logp], dim=1)


def test_answer_tokens_are_located(tiny, batch):
    _, processor = tiny
    tok = processor.tokenizer
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    ours = answer_token_masks(ids, mask, tok)
    ref = answer_token_masks(ids, mask, tok, reproduce_reference=True)
    decoded = [tok.decode(ids[i][ours[i]]) for i in range(4)]
    assert decoded == ["B", "C", "", "A"]
    # The reference span: from the '>' of the LAST tag.
    assert [tok.decode(ids[i][ref[i]]) for i in range(4)] == [">B", ">D", "", ">A"]
    assert not (ours & ~mask.bool()).any()  # never on padding
    # A multi-byte answer split into byte tokens stays whole.
    e_ids = tok("<answer>é</answer>", add_special_tokens=False)["input_ids"]
    kept = [i for i, m in zip(e_ids, answer_token_mask(e_ids, tok), strict=True) if m]
    assert tok.decode(kept) == "é" and len(kept) >= 2


@pytest.mark.parametrize("reproduce_reference", [False, True])
def test_answer_only_scoring_equals_full_logits(tiny, batch, reproduce_reference):
    model, processor = tiny
    mask_c = answer_token_masks(batch["completion_ids"], batch["completion_mask"], processor.tokenizer,
                                reproduce_reference=reproduce_reference)
    targets = _targets(batch, mask_c)
    out = answer_likelihood(model, model_inputs(batch), targets, upper_bound=0.95, chunk_size=2)
    naive = _naive_logp(model, batch)
    for row in range(4):
        n = int(targets[row].sum())
        assert int(out.n_tokens[row]) == n
        if n == 0:
            assert not out.has_answer[row] and math.isnan(out.p[row]) and math.isnan(out.mean_logp[row])
            continue
        want = naive[row][targets[row]].mean().item()
        assert out.mean_logp[row].item() == pytest.approx(want, abs=1e-5)
        assert out.p[row].item() == pytest.approx(min(math.exp(want), 0.95), abs=1e-5)
    assert out.has_answer.tolist() == [True, True, False, True]


def test_all_completion_tokens_with_temperature_entropy_and_gradient(tiny, batch):
    model, _ = tiny
    targets = _targets(batch, batch["completion_mask"].bool())
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        out = token_log_probs(model, model_inputs(batch), targets, chunk_size=16, temperature=0.7, with_entropy=True)
    finally:
        hook.remove()
    naive = _naive_logp(model, batch, temperature=0.7)
    torch.testing.assert_close(out.logp[targets], naive[targets], rtol=0, atol=1e-5)
    assert (out.logp[~targets] == 0).all()
    # The LM head only ever saw chunks of target positions, never [b, t, v].
    vocab = model.get_output_embeddings().weight.shape[0]
    assert all(s[0] <= 16 and len(s) == 2 and s[1] == vocab for s in seen)
    assert sum(s[0] for s in seen) == int(targets.sum())
    with torch.no_grad():
        logits = model(**model_inputs(batch), use_cache=False).logits.float() / 0.7
    logp_full = torch.log_softmax(logits[:, :-1], -1)
    entropy_full = -(logp_full.exp() * logp_full).sum(-1)
    entropy_full = torch.cat([torch.zeros(4, 1), entropy_full], 1)
    torch.testing.assert_close(out.entropy[targets], entropy_full[targets], rtol=0, atol=1e-5)
    out.logp.sum().backward()  # the training forward: gradients reach the weights
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_bad_masks_are_rejected(tiny, batch):
    model, _ = tiny
    targets = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    targets[:, 0] = True
    with pytest.raises(ValueError, match=r"target_mask\[:, 0\]"):
        token_log_probs(model, model_inputs(batch), targets)
    with pytest.raises(ValueError, match="must match input_ids"):
        token_log_probs(model, model_inputs(batch), targets[:, 1:])


def test_selective_log_softmax_matches_log_softmax_in_every_dtype():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g) * 4
    index = torch.randint(0, 50, (3, 5), generator=g)
    want = torch.log_softmax(logits.double(), -1).gather(-1, index[..., None]).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, index).double(), want, rtol=0, atol=1e-5)
    got = selective_log_softmax(logits.bfloat16(), index).double()
    want_bf16 = torch.log_softmax(logits.bfloat16().double(), -1).gather(-1, index[..., None]).squeeze(-1)
    torch.testing.assert_close(got, want_bf16, rtol=0, atol=1e-4)
