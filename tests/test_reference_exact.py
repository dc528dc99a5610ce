"""``scoring.reproduce_reference`` against the reference code's rules, re-implemented here index for index on
the project's tokenizer and the tiny Qwen2.5-VL (TencentARC/GRPO-CARE, src/r1-v/src/open_r1/trainer/
grpo_trainer_ref_ema.py: ``get_thinking_answer_masks`` and the CARE block of ``compute_loss``)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydantic
import pytest
import torch

from care.algo.answer_span import answer_token_masks
from care.algo.consistency import consistency_bonus
from care.algo.likelihood import answer_likelihood
from care.algo.prompt import build_messages
from care.models.inputs import encode_prompt_completions, model_inputs
from care.models.loading import load_model, load_processor
from care.models.tiny import make_tiny_model
from care.store.rollout_log import read_rows
from care.train.config import ScoringConfig
from care.train.scoring import _write_scored

CORPUS = [
    "<think>The agent walks to the purple marker.</think><answer>C</answer>",
    "The agent walks to a marker. What should it do next?",
    "pick up the red marker.",
] * 10

# completion -> (reference span, [ours] span), decoded
WHERE_THE_RULES_PART = {
    "<think>x</think><answer> B </answer><|im_end|>": ("> B", "B"),
    "<think>x</think><answer>B</answer>\n<|im_end|>": (">B</", "B"),
    "<think>x</think><answer>B</answer> pick up the red marker.<|im_end|>": (">B</answer> pick up the", "B"),
    "<think>x</think><answer>C</answer> or <answer>B<|im_end|>": ("", "C"),  # unclosed final tag
}
MORE = [
    "<think>x</think><answer>B</answer><|im_end|>",
    "<think>I do not know</think><|im_end|>",  # no tag: the prompt's "<answer>" is found and rejected
    "<answer>\nB\n</answer><|im_end|>",
    "<think>x</think><answer><|im_end|>",
    "<|im_end|>",
]


def official_answer_mask(prompt_completion_ids, prompt_length, completion_ids, tokenizer):
    """The reference trainer's ``mask_answer`` [b, c] for ``generate``'s output: the prompt + completion ids
    [b, p + c] (prompt left-padded, completion right-padded with the pad id) and the completion ids [b, c]."""
    b, c = completion_ids.shape
    is_eos = completion_ids == tokenizer.eos_token_id
    eos_idx = torch.full((b,), c, dtype=torch.long)
    has_eos = is_eos.any(dim=1)
    eos_idx[has_eos] = is_eos.int().argmax(dim=1)[has_eos]
    positions = torch.arange(c).expand(b, -1)
    tag_index = []
    for row in prompt_completion_ids:
        kept = row[row != tokenizer.pad_token_id]
        tokens = tokenizer.convert_ids_to_tokens(kept.tolist())
        found = None
        for i in range(len(tokens)):  # tokens[-0] is the first token; then from the last one backwards
            if "answer" in tokens[-i] and "<answer>" in "".join(tokens[-i - 1 : -i + 2]):
                found = -i
                break
        if found is not None and kept[: found + 1].shape[-1] > prompt_length:
            tag_index.append(len(kept) + found)
        else:  # no tag, or the prompt's
            tag_index.append(len(kept))
    tag_index = torch.tensor(tag_index) - prompt_length
    end = torch.maximum(tag_index + 1, eos_idx - 3)
    return (positions > tag_index[:, None]) & (positions < end[:, None])


def official_bonus(accuracy, p, *, lam, margin):
    """The CARE block on one device's rollouts (float32 tensors, as the reference's)."""
    accurate = (accuracy > 0.1) * (accuracy >= accuracy.mean())
    confident = p >= (p[accurate].mean() - margin)
    bonus = torch.zeros_like(accuracy)
    bonus[accurate * confident] = accuracy[accurate * confident]
    return bonus * lam


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus=CORPUS, seed=0)
    return load_model(folder).eval(), load_processor(folder)


def _one_prompt(processor, completions: list[list[int]]):
    """G completions of one prompt, as one device of the reference scores them (no prompt padding)."""
    rng = np.random.default_rng(0)
    item = {"messages": build_messages("What should it do next?", ["pick up the red marker", "go left", "wait",
                                                                   "open the door"], has_video=True),
            "video": rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8),
            "image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)}
    return encode_prompt_completions(processor, [item] * len(completions), completions, fps=2.0)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _check_equals_official(processor, completions):
    tok = processor.tokenizer
    batch = _one_prompt(processor, completions)
    ours = answer_token_masks(batch["completion_ids"], batch["completion_mask"], tok, reproduce_reference=True)
    official = official_answer_mask(batch["input_ids"], batch["prompt_length"], batch["completion_ids"], tok)
    assert torch.equal(ours, official)
    return batch, ours


def test_reference_span_equals_the_reference_code(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    texts = [*WHERE_THE_RULES_PART, *MORE]
    _check_equals_official(processor, [_ids(tok, t) for t in texts])  # one batch: right padding included
    # a pad token sampled before the tag shifts the reference's span left (it drops pads before indexing)
    with_pad = [tok.pad_token_id, *_ids(tok, "<think>x</think><answer>B</answer><|im_end|>")]
    batch, ours = _check_equals_official(processor, [with_pad])
    assert tok.decode(batch["completion_ids"][0][ours[0]]) == "answer>B"
    # no EOS (cut at max_new_tokens, the longest row: the reference's eos index is the batch width)
    for text in ("<think>x</think><answer>B</answer> and then", "<think>x</think><answer>B"):
        _check_equals_official(processor, [_ids(tok, text)])


@pytest.mark.parametrize("text", list(WHERE_THE_RULES_PART))
def test_where_the_rules_part(tiny, text):
    _, processor = tiny
    tok = processor.tokenizer
    batch, reference = _check_equals_official(processor, [_ids(tok, text)])
    ids = batch["completion_ids"][0]
    ours = answer_token_masks(batch["completion_ids"], batch["completion_mask"], tok)
    want_reference, want_ours = WHERE_THE_RULES_PART[text]
    assert tok.decode(ids[reference[0]]) == want_reference
    assert tok.decode(ids[ours[0]]) == want_ours
    assert not torch.equal(reference, ours)


def test_empty_reference_span_scores_the_clamp(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    texts = [*WHERE_THE_RULES_PART, *MORE]
    batch = _one_prompt(processor, [_ids(tok, t) for t in texts])
    b, prompt = batch["input_ids"].shape[0], batch["prompt_length"]
    with torch.no_grad():
        logits = model(**model_inputs(batch), use_cache=False).logits.float()
    naive = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    naive = torch.cat([torch.zeros(b, 1), naive], dim=1)  # [b, t]: log p of token j at column j
    for reproduce in (False, True):
        span = answer_token_masks(batch["completion_ids"], batch["completion_mask"], tok,
                                  reproduce_reference=reproduce)
        target = torch.cat([torch.zeros(b, prompt, dtype=torch.bool), span], dim=1)
        out = answer_likelihood(model, model_inputs(batch), target, upper_bound=0.95,
                                reproduce_reference=reproduce)
        for row, text in enumerate(texts):
            n = int(target[row].sum())
            if reproduce:
                want = naive[row][target[row]].sum().item() / (n + 1e-6)  # the reference's mean
                assert out.mean_logp[row].item() == pytest.approx(want, abs=1e-5)
                assert out.p[row].item() == pytest.approx(min(math.exp(want), 0.95), abs=1e-5)
            if n == 0 and reproduce:  # the reference: exp(0 / 1e-6) = 1, clamped
                assert not out.has_answer[row]
                assert out.p[row].item() == np.float32(0.95) and out.mean_logp[row].item() == 0.0
            elif n == 0:  # [ours]: no likelihood
                assert not out.has_answer[row]
                assert math.isnan(out.p[row]) and math.isnan(out.mean_logp[row])
            if "or <answer>B" in text:  # unclosed final tag: the reference clamps; [ours] scores the first tag
                assert (n == 0) == reproduce


def _rollouts(gen: torch.Generator, n: int):
    """Accuracy and clamped likelihoods as the reference computes them (float32), many at the clamp."""
    acc = (torch.rand(n, generator=gen) < 0.6).float()
    p = torch.exp(-0.1 * torch.rand(n, generator=gen)).clamp(max=0.95)
    return acc, p


@pytest.mark.parametrize("margin", [0.0, 0.01])
def test_bonus_equals_the_reference_code_per_device(margin):
    gen = torch.Generator().manual_seed(0)
    G, P = 8, 4
    groups = torch.arange(P).repeat_interleave(G)
    at_clamp = 0
    for _ in range(300):
        acc, p = _rollouts(gen, P * G)
        # one prompt per device: the released runs; pools of 8 or fewer tie exactly in any float32 order
        want = torch.cat([official_bonus(acc[groups == g], p[groups == g], lam=0.5, margin=margin)
                          for g in range(P)])
        got = consistency_bonus(acc.double(), p.double(), groups, margin=margin, reproduce_reference=True)
        assert got.tolist() == want.tolist()
        at_clamp += sum(int(acc[groups == g].sum() > 1 and p[(groups == g) & (acc > 0)].eq(np.float32(0.95)).all())
                        for g in range(P))
        # two prompts per device (ties away from the clamp, where the float32 summation order cannot matter)
        p2 = torch.rand(P * G, generator=gen) * 0.9
        want = torch.cat([official_bonus(acc[d * 2 * G:(d + 1) * 2 * G], p2[d * 2 * G:(d + 1) * 2 * G], lam=0.5,
                                         margin=margin) for d in range(P // 2)])
        got = consistency_bonus(acc.double(), p2.double(), groups, margin=margin, reproduce_reference=True,
                                prompts_per_device=2)
        assert got.tolist() == want.tolist()
    assert at_clamp > 10  # groups whose correct rollouts were all at the clamp did occur


def test_float32_means_at_the_clamp_tie_in_every_summation_order_up_to_eight():
    """Why reference mode treats a pool at the clamp as a tie: for up to 8 values (the released G), every
    association order of the float32 sum gives a mean of at most float32(0.95); from 9 on some do not."""
    c = np.float32(0.95)
    sums = {1: {c}}
    for k in range(2, 10):
        sums[k] = {np.float32(x + y) for a in range(1, k) for x in sums[a] for y in sums[k - a]}
    assert all(c >= np.float32(s / np.float32(k)) for k in range(1, 9) for s in sums[k])
    assert not all(c >= np.float32(s / np.float32(9)) for s in sums[9])
    assert sum([0.95] * 6) / 6 > 0.95  # float64 rounds above it (k = 6..9): hence [ours]'s tolerance


def _rows(accuracy: list[float]):
    golds = "ABCD"
    rows = []
    for i, acc in enumerate(accuracy):
        group = i // 2
        gold = golds[group]
        answer = gold if acc else "D" if gold != "D" else "A"
        rows.append({"rollout_uid": f"u{i}", "run_id": "r", "iteration": 0, "group": group, "sample_index": i % 2,
                     "completion": f"<think>x</think><answer>{answer}</answer>", "gold": gold,
                     "completion_tokens": 8, "truncated": False})
    return rows


def test_scoring_pools_the_configured_prompts_per_device(tmp_path: Path):
    # prompts 0 and 1 are all correct; prompt 1's likelihoods are lower
    rows, p = _rows([1, 1, 1, 1]), [0.9, 0.8, 0.6, 0.5]
    bonuses = {}
    for per_device in (1, 2):
        config = ScoringConfig(reproduce_reference=True, reference_prompts_per_device=per_device)
        _write_scored(tmp_path / "generated.parquet", rows, p, [math.log(x) for x in p], [True] * 4,
                      state=SimpleNamespace(state_id="s0"), config=config, algo="grpo_care", started=0.0)
        bonuses[per_device] = [r["bonus"] for r in read_rows(tmp_path / "scored.parquet")]
    assert bonuses[1] == [0.5, 0.0, 0.5, 0.0]  # per prompt
    assert bonuses[2] == [0.5, 0.5, 0.0, 0.0]  # pbar = 0.7 over both prompts
    assert ScoringConfig().reference_prompts_per_device == 1
    with pytest.raises(pydantic.ValidationError):
        ScoringConfig(reference_prompts_per_device=0)


STAGE_COMPLETIONS = [  # {g} = the gold letter, {w} = a wrong one
    "<think>x</think><answer>{g}</answer> or <answer>{w}<|im_end|>",  # correct; unclosed final tag
    "<think>x</think><answer>{g}</answer><|im_end|>",
    "<think>x</think><answer> {g} </answer>\n<|im_end|>",
    "<think>x</think><answer>{w}</answer><|im_end|>",
]


def test_scoring_stage_reproduces_the_reference(tmp_path, demo_root, tiny_model_dir):
    """The scoring stage in reference mode on hand-written rollouts of 2 prompts: likelihoods from the
    reference's mask and mean under the checkpoint's reference model, bonus from its per-device block."""
    from care.models.samples import shared_prompt_items
    from care.store.rollout_log import GENERATED_FILE, GENERATED_SCHEMA, write_rows_atomic
    from care.train.checkpoint import make_initial_checkpoint
    from care.train.scoring import run_scoring_stage
    from tests.rl_helpers import cache_demo

    data = cache_demo(tmp_path / "home", demo_root)
    samples = data.load().samples[:2]
    ck0 = make_initial_checkpoint(tiny_model_dir, tmp_path / "ckpt")
    processor, model = load_processor(tiny_model_dir), load_model(ck0 / "reference", dtype=torch.float32).eval()
    tok = processor.tokenizer
    rows = []
    for g, sample in enumerate(samples):
        wrong = "A" if sample.answer != "A" else "B"
        for i, text in enumerate(STAGE_COMPLETIONS):
            text = text.format(g=sample.answer, w=wrong)
            ids = _ids(tok, text)
            rows.append({"rollout_uid": f"u{g}-{i}", "run_id": "r", "iteration": 0, "group": g, "sample_index": i,
                         "sample_id": sample.sample_id, "split": sample.split, "gold": sample.answer,
                         "options": list(sample.options), "question": sample.question, "prompt_version": "v",
                         "prompt_template": "care@seedbench-r1-v1",
                         "policy_checkpoint": "c", "backend": "hf", "seed": 0, "temperature": 1.0, "top_p": 1.0,
                         "top_k": 0, "max_new_tokens": 64, "prompt_tokens": 0, "completion_tokens": len(ids),
                         "truncated": False, "completion": text.replace("<|im_end|>", ""), "completion_ids": ids,
                         "behaviour_logprobs": [0.0] * len(ids), "generation_seconds": 0.0})
    generated = write_rows_atomic(tmp_path / "it0" / GENERATED_FILE, rows, GENERATED_SCHEMA)
    config = ScoringConfig(reproduce_reference=True)
    run_scoring_stage(generated_path=generated, checkpoint=ck0, samples=data.load().by_id(), cache=data.cache(),
                      config=config, algo="grpo_care")
    scored = read_rows(Path(generated).parent / "scored.parquet")

    want_p, want_bonus = [], []
    for g, sample in enumerate(samples):  # one device: one prompt, its G rollouts, full logits
        group = [r for r in rows if r["group"] == g]
        items, rates = shared_prompt_items([sample] * len(group), data.cache())
        batch = encode_prompt_completions(processor, items, [r["completion_ids"] for r in group], fps=rates)
        mask = official_answer_mask(batch["input_ids"], batch["prompt_length"], batch["completion_ids"], tok)
        with torch.no_grad():
            logits = model(**model_inputs(batch), use_cache=False).logits.float()
        prompt = batch["prompt_length"]
        logp = torch.log_softmax(logits[:, prompt - 1 : -1], -1).gather(-1, batch["completion_ids"][..., None])
        p = torch.exp((logp.squeeze(-1) * mask).sum(1) / (mask.sum(1) + 1e-6)).clamp(max=0.95)
        acc = torch.tensor([1.0, 1.0, 1.0, 0.0])
        want_p += p.tolist()
        want_bonus += official_bonus(acc, p, lam=0.5, margin=0.0).tolist()
    assert [s["ref_likelihood"] for s in scored] == pytest.approx(want_p, abs=1e-6)
    assert [s["bonus"] for s in scored] == want_bonus
    assert [s["ref_likelihood"] for s in scored][0::4] == [np.float32(0.95)] * 2  # the unclosed final tags
    assert [s["bonus"] for s in scored][0::4] == [0.5, 0.5]
    assert [s["reward_accuracy"] for s in scored] == [1.0, 1.0, 1.0, 0.0] * 2
