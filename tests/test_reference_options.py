"""Switches between our defaults and the reference code's behaviour (docs/algorithm.md, "Where we differ"):
weight-decay exemptions, the stop tokens, the prompt template, the temporal positions of the frames and the
evaluation's frame count. Each test fails when its switch is ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from care.algo.prompt import (
    DEFAULT_TEMPLATE,
    TEMPLATES,
    build_messages,
    build_prompt_text,
    prompt_template,
    template_by_id,
)
from care.models.inputs import PromptItem, encode_prompts
from care.models.loading import load_model, load_processor, stop_token_ids, suppressed_token_ids
from care.train.config import RLConfig

OPTIONS = ["pick up the blue marker", "pick up the green marker", "pick up the red marker",
           "pick up the yellow marker"]
BASE = {"model": "m", "data_root": "d"}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir), load_processor(tiny_model_dir)


def _text(messages: list[dict]) -> str:
    return next(c["text"] for c in messages[0]["content"] if c["type"] == "text")


# ----------------------------------------------------------------------------------------- weight decay


def test_decay_exempts_biases_and_norms_exactly_as_the_hf_trainer(tiny):
    from transformers import Trainer

    from care.train.toolkit import decay_parameter_names

    model, _ = tiny
    names = {n for n, _ in model.named_parameters()}
    decayed = decay_parameter_names(model)
    assert decayed == set(Trainer.get_decay_parameter_names(None, model))  # the installed Trainer's own rule
    exempt = names - decayed
    assert exempt and all(n.endswith(".bias") or "norm" in n for n in exempt)
    assert "model.language_model.norm.weight" in exempt
    assert any(n.endswith("input_layernorm.weight") for n in exempt)
    assert all(n.endswith(".weight") and "layernorm" not in n for n in decayed)
    assert decay_parameter_names(model, "none") == names


@pytest.mark.parametrize("exempt", ["bias_and_norm", "none"])
def test_exempt_parameters_are_not_decayed(tiny_model_dir, exempt):
    from care.train.toolkit import make_optimizer

    model = load_model(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(model, learning_rate=0.1, betas=(0.9, 0.999), weight_decay=0.5,
                               weight_decay_exempt=exempt)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's own step is 0: only the decoupled decay moves a weight
    optimizer.step()
    after = dict(model.named_parameters())
    norm, bias = "model.language_model.norm.weight", "model.language_model.layers.0.self_attn.q_proj.bias"
    linear = "model.language_model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(after[linear], before[linear] * (1 - 0.1 * 0.5))
    for name in (norm, bias):
        if exempt == "none":
            torch.testing.assert_close(after[name], before[name] * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(after[name], before[name]), name


def test_weight_decay_exempt_is_part_of_the_run_and_checked_on_resume(tmp_path, tiny_model_dir):
    from care.errors import CareError
    from care.train.checkpoint import save_checkpoint
    from care.train.config import OptimConfig
    from care.train.sft_config import SFTConfig
    from care.train.toolkit import make_optimizer
    from care.train.trainer import _check_groups

    assert OptimConfig().weight_decay_exempt == "bias_and_norm"
    assert RLConfig(**BASE).run_id() != RLConfig(**BASE, optim={"weight_decay_exempt": "none"}).run_id()
    assert SFTConfig(**BASE).run_id() != SFTConfig(**BASE, weight_decay_exempt="none").run_id()
    model = load_model(tiny_model_dir)
    old = make_optimizer(model, learning_rate=1e-3, betas=(0.9, 0.999), weight_decay=0.01, weight_decay_exempt="none")
    save_checkpoint(tmp_path / "ck", policy=model, optimizer=old)
    import json

    meta = json.loads((tmp_path / "ck" / "optimizer.json").read_text())
    new = make_optimizer(model, learning_rate=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
    assert [g["weight_decay"] for g in new.param_groups] == [0.01, 0.0]
    with pytest.raises(CareError, match="weight_decay_exempt"):
        _check_groups(new, meta, tmp_path / "ck")
    _check_groups(old, meta, tmp_path / "ck")  # the same setting loads


# ----------------------------------------------------------------------------------------- stop tokens


def test_reference_eos_stops_on_endoftext_too(tiny):
    from care.models.generation import Decoding, sample_completions

    model, processor = tiny
    tok = processor.tokenizer
    im_end, endoftext = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert stop_token_ids(processor, "care") == [im_end]
    assert stop_token_ids(processor, "reference") == [im_end, endoftext]
    item = PromptItem(build_messages("What next?", OPTIONS, has_video=False), image=_image())
    enc = encode_prompts(processor, [item], fps=[None])

    def prefer_endoftext(module, args, output):  # the model wants to end with <|endoftext|> at every step
        output = output.clone()
        output[..., endoftext] += 1e4
        return output

    handle = model.get_output_embeddings().register_forward_hook(prefer_endoftext)
    try:
        got = {}
        for eos in ("care", "reference"):
            stop = stop_token_ids(processor, eos)
            [c] = sample_completions(model, enc, tok, group_size=1, decoding=Decoding(max_new_tokens=6, do_sample=False),
                                     seed=0, eos_token_ids=stop, pad_token_id=tok.pad_token_id,
                                     suppress_token_ids=suppressed_token_ids(processor, stop=stop))
            got[eos] = c
    finally:
        handle.remove()
    assert got["reference"].token_ids == (endoftext,) and not got["reference"].truncated
    assert endoftext not in got["care"].token_ids and len(got["care"].token_ids) > 1  # suppressed, never a stop


def test_rollout_and_vllm_requests_stop_on_the_configured_tokens(tmp_path, monkeypatch, demo_root, tiny_model_dir):
    import care.train.rollout as rollout
    from care.models.rollout_config import RolloutConfig
    from care.models.vllm_backend import build_requests
    from care.train.checkpoint import make_initial_checkpoint
    from tests.rl_helpers import cache_demo

    data = cache_demo(tmp_path / "home", demo_root)
    samples = data.load().samples[:1]
    ck0 = make_initial_checkpoint(tiny_model_dir, tmp_path / "ckpt" / "iter-00000")
    seen = []
    real = rollout.sample_completions

    def spy(*args, **kwargs):
        seen.append((list(kwargs["eos_token_ids"]), list(kwargs["suppress_token_ids"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout, "sample_completions", spy)
    processor = load_processor(tiny_model_dir)
    endoftext = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = RolloutConfig(group_size=2, prompts_per_iteration=1,
                           sampling={"max_new_tokens": 4, "eos": "reference"})
    rollout.run_rollout_stage(run_id="t", iteration=0, checkpoint=ck0, samples=samples, cache=data.cache(),
                              config=config, seed=0, out_dir=tmp_path / "it0")
    [(stop, suppress)] = seen
    assert stop == stop_token_ids(processor, "reference") and endoftext not in suppress
    items, rates = rollout.prompt_items(samples, data.cache())
    [request] = build_requests(processor, items, rates, config=config, seeds=[0])
    assert request["stop_token_ids"] == stop and request["suppress_token_ids"] == suppress
    [care] = build_requests(processor, items, rates, config=RolloutConfig(), seeds=[0])
    assert care["stop_token_ids"] == [processor.tokenizer.eos_token_id] and endoftext in care["suppress_token_ids"]
    assert RLConfig(**BASE).run_id() != RLConfig(**BASE, rollout={"sampling": {"eos": "reference"}}).run_id()


# ----------------------------------------------------------------------------------------- prompt


REFERENCE_QUESTION_TEMPLATE_TRAIN = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer between "
    "the <answer> </answer> tags."
)
REFERENCE_QUESTION_TEMPLATE_EVAL = REFERENCE_QUESTION_TEMPLATE_TRAIN.replace(
    "<think> </think>", "<think> and </think>").replace("<answer> </answer> tags.", "<answer> and </answer> tags.")
REFERENCE_MULTIPLE_CHOICE = (" Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
                             "<answer> </answer> tags.")


def _official_text(question: str, options: list[str], template: str) -> str:
    """The reference code's SEED-Bench-R1 user text, assembled as grpo.py / eval_bench.py assemble it."""
    question = question + "Options:\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options)) + "\n"
    return template.format(Question=question) + REFERENCE_MULTIPLE_CHOICE


@pytest.mark.parametrize("question", ["What should the agent do next? ", "Next step?"])
def test_reference_templates_reproduce_the_official_text(question):
    train, evaluation = prompt_template("reference", "train"), prompt_template("reference", "eval")
    assert build_prompt_text(question, OPTIONS, train) == _official_text(question, OPTIONS,
                                                                         REFERENCE_QUESTION_TEMPLATE_TRAIN)
    assert build_prompt_text(question, OPTIONS, evaluation) == _official_text(question, OPTIONS,
                                                                              REFERENCE_QUESTION_TEMPLATE_EVAL)
    assert "between the <think> and </think> tags" in build_prompt_text(question, OPTIONS, evaluation)
    # the default stays ours, and unchanged
    assert build_prompt_text(question, OPTIONS) == build_prompt_text(question, OPTIONS, prompt_template("care", "eval"))
    assert build_prompt_text(question, OPTIONS).startswith(question.strip() + "\nOptions:\nA. pick up the blue")


def test_templates_are_registered_once_and_found_by_id():
    ids = [t.template_id for t in TEMPLATES.values()]
    assert len(ids) == len(set(ids)) == 9  # care, reference train + eval, 6 transfer benchmarks
    for t in TEMPLATES.values():
        assert template_by_id(t.template_id) is t
    assert prompt_template() is DEFAULT_TEMPLATE and DEFAULT_TEMPLATE.template_id == "care@seedbench-r1-v1"
    with pytest.raises(ValueError, match="not registered"):
        template_by_id("reference@nope")
    with pytest.raises(ValueError, match="prompt 'mine'"):
        prompt_template("mine")


def test_prompt_option_is_part_of_the_run_and_the_stage_keys():
    from care.eval_schema import EvalConfig
    from care.models.rollout_config import RolloutConfig
    from care.models.samples import DataSpec
    from care.train.state import PolicyState
    from tasks.rl import _rollout_key

    reference = RLConfig(**BASE, rollout={"prompt": "reference"})
    assert RLConfig(**BASE).rollout.prompt == "care" and reference.run_id() != RLConfig(**BASE).run_id()
    assert reference.eval_config("c").prompt == "reference"  # the periodic evaluation asks as training does
    assert RLConfig(**BASE, rollout={"prompt": "reference"}, eval={"prompt": "care"}).eval_config("c").prompt == "care"
    assert EvalConfig(checkpoint="c", data_root="d").prompt == "care"
    p = {"run_id": "r", "iteration": 0, "state": PolicyState(state_id="s", iteration=0, checkpoints="/x"),
         "sample_ids": ["a"], "data": DataSpec(data_root="d", annotation_file="a", cache_root="c"), "seed": 0}
    assert _rollout_key(None, {**p, "config": RolloutConfig()}) != \
        _rollout_key(None, {**p, "config": RolloutConfig(prompt="reference")})


def test_rollout_rows_record_the_template_and_scoring_and_update_rebuild_it(tmp_path, monkeypatch, demo_root,
                                                                           tiny_model_dir):
    import care.train.optimise as optimise
    import care.train.scoring as scoring
    from care.models.rollout_config import RolloutConfig
    from care.store.rollout_log import read_rows
    from care.train.checkpoint import make_initial_checkpoint
    from care.train.config import OptimConfig, ScoringConfig
    from care.train.optimise_stage import run_optimisation_stage
    from care.train.rollout import run_rollout_stage
    from tests.rl_helpers import cache_demo

    data = cache_demo(tmp_path / "home", demo_root)
    samples = data.load()
    ck0 = make_initial_checkpoint(tiny_model_dir, tmp_path / "ckpt" / "iter-00000")
    shards = {}
    for name in ("care", "reference"):
        config = RolloutConfig(prompt=name, group_size=2, prompts_per_iteration=1, sampling={"max_new_tokens": 4})
        shards[name] = run_rollout_stage(run_id="t", iteration=0, checkpoint=ck0, samples=samples.samples[:1],
                                         cache=data.cache(), config=config, seed=0, out_dir=tmp_path / name)["path"]
    rows = {name: read_rows(Path(path)) for name, path in shards.items()}
    assert {r["prompt_template"] for r in rows["reference"]} == {"reference@b0628fc-train"}
    assert {r["prompt_template"] for r in rows["care"]} == {"care@seedbench-r1-v1"}
    assert {r["prompt_version"] for r in rows["care"]} == {"seedbench-r1-v1"}  # unchanged for the default
    assert rows["reference"][0]["prompt_tokens"] > rows["care"][0]["prompt_tokens"] + 50

    texts = []
    for module in (scoring, optimise):
        real = module.encode_prompt_completions

        def spy(processor, items, *args, _real=real, **kwargs):
            texts.extend(_text(item.messages) for item in items)
            return _real(processor, items, *args, **kwargs)

        monkeypatch.setattr(module, "encode_prompt_completions", spy)
    scored = scoring.run_scoring_stage(generated_path=shards["reference"], checkpoint=ck0, samples=samples.by_id(),
                                       cache=data.cache(), config=ScoringConfig(), algo="grpo_care")
    n_scoring = len(texts)
    run_optimisation_stage(checkpoint_in=ck0, generated_path=shards["reference"], scored_path=scored["path"],
                           data=data, config=OptimConfig(micro_batch_size=2), total_steps=1, temperature=1.0,
                           max_new_tokens=4, iteration=0, timeout_s=300)
    assert 0 < n_scoring < len(texts)
    assert all("pondering deeply" in t and "Options:" in t for t in texts)


def test_the_planner_sizes_the_configured_prompt(tiny_model_dir):
    from care import plan

    care = plan.prompt_shape(str(tiny_model_dir), None, None)
    reference = plan.prompt_shape(str(tiny_model_dir), None, None, template=prompt_template("reference", "train"))
    assert reference.text_tokens > care.text_tokens + 50


def test_eval_rows_and_results_record_the_prompt_template(tmp_path):
    import duckdb

    from care.eval.evaluate import eval_context, overall_record
    from care.eval_schema import EvalConfig
    from care.store import catalog, evals

    config = EvalConfig(checkpoint="c", data_root="d", prompt="reference")
    context = eval_context(config, run_id="r", label="l", checkpoint_id="x")
    assert (context["prompt_template"], context["prompt_version"]) == ("reference@b0628fc-eval", "b0628fc-eval")
    accuracy = {"level": "L1", "n": 2, "correct": 1, "accuracy": 0.5, "ci_low": 0.1, "ci_high": 0.9,
                "confidence": 0.95, "prompt_template": context["prompt_template"]}
    pooled = overall_record([{"accuracy": accuracy, "consistency": []}])
    assert pooled["accuracy"]["prompt_template"] == "reference@b0628fc-eval"

    db = tmp_path / "care.duckdb"  # a catalog made before the column existed
    con = duckdb.connect(str(db))
    con.execute(evals.EVAL_RESULTS_DDL.replace("    prompt_template VARCHAR,\n", ""))
    con.close()
    evals.record_eval_results(evals.result_rows(run_id="r", checkpoint_id="x", label="l", checkpoint="c",
                                                accuracy=accuracy, consistency=[]), path=db)
    evals.record_eval_results(evals.result_rows(run_id="r", checkpoint_id="x", label="l", checkpoint="c",
                                                accuracy=pooled["accuracy"], consistency=[]), path=db)
    assert catalog.query("select level, prompt_template from eval_results order by level", path=db) == [
        ("L1", "reference@b0628fc-eval"), ("all", "reference@b0628fc-eval")]


# ----------------------------------------------------------------------------------------- temporal positions


def _image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (56, 56, 3), dtype=np.uint8)


def _video_positions(model, processor, fps: float, seconds_per_grid: float | None) -> torch.Tensor:
    video = np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    item = PromptItem(build_messages("What next?", OPTIONS, has_video=True), video=video, image=_image(),
                      seconds_per_grid=seconds_per_grid)
    enc = encode_prompts(processor, [item], fps=fps)
    positions, _ = model.model.get_rope_index(
        enc["input_ids"], enc["mm_token_type_ids"], image_grid_thw=enc["image_grid_thw"],
        video_grid_thw=enc["video_grid_thw"], second_per_grid_ts=enc["second_per_grid_ts"],
        attention_mask=enc["attention_mask"])
    video_id = model.config.video_token_id
    return positions[0, 0][enc["input_ids"][0] == video_id], enc["second_per_grid_ts"]  # temporal row, video tokens


def test_fixed_temporal_positions_ignore_the_frame_rate(tiny):
    model, processor = tiny
    real, real_s = _video_positions(model, processor, fps=4.0, seconds_per_grid=None)
    fixed, fixed_s = _video_positions(model, processor, fps=4.0, seconds_per_grid=1.0)
    at_2fps, _ = _video_positions(model, processor, fps=2.0, seconds_per_grid=None)
    assert real_s.tolist() == [0.5] and fixed_s.tolist() == [1.0]
    assert not torch.equal(real, fixed)  # 4 frames at 4 fps span 1 s, at 1 s per 2-frame patch 2 s
    assert (fixed.max() - fixed.min()) == 2 * (real.max() - real.min())
    assert torch.equal(fixed, at_2fps)  # the reference's fixed value is what 2 fps gives


def test_frames_temporal_reaches_the_prompts_and_the_run_id_not_the_cache(tmp_path, demo_root):
    from care.media.cache import cache_key
    from care.media.preprocess import shard_fingerprint
    from care.media.sampling import FrameSampling
    from care.models.samples import prompt_items
    from tests.rl_helpers import SAMPLING, cache_demo

    data = cache_demo(tmp_path / "home", demo_root)
    fixed = data.model_copy(update={"sampling": SAMPLING.model_copy(update={"temporal": "fixed_1s"})})
    samples = [s for s in data.load().samples if s.video][:2]
    items, _ = prompt_items(samples, fixed.cache())  # the same cache entries: temporal is no part of the key
    assert [i.seconds_per_grid for i in items] == [1.0, 1.0]
    plain, _ = prompt_items(samples, data.cache())
    assert [i.seconds_per_grid for i in plain] == [None, None]
    assert cache_key("ab" * 32, "video", SAMPLING) == cache_key("ab" * 32, "video", fixed.sampling)
    assert shard_fingerprint([], SAMPLING) == shard_fingerprint([], fixed.sampling)
    assert RLConfig(**BASE).run_id() != RLConfig(**BASE, frames={"temporal": "fixed_1s"}).run_id()
    # the reference evaluates at the real rate whatever it trained with
    assert RLConfig(**BASE, frames={"temporal": "fixed_1s"}).eval_config("c").frames.temporal == "real_fps"
    from care.pipeline import PipelineConfig

    pipeline = PipelineConfig.model_validate({"frames": {"temporal": "fixed_1s"}})
    assert pipeline.rl_config("m", "d").frames.temporal == pipeline.sft_config("m", "d").frames.temporal == "fixed_1s"
    assert pipeline.eval_config("c", "d", "base").frames.temporal == "real_fps"
    assert FrameSampling().temporal == "real_fps"


def test_vllm_requests_carry_the_fixed_temporal_rate(tiny):
    from care.models.rollout_config import RolloutConfig
    from care.models.vllm_backend import build_requests

    _, processor = tiny
    video = np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    messages = build_messages("What next?", OPTIONS, has_video=True)
    fixed = PromptItem(messages, video=video, image=_image(), seconds_per_grid=1.0)
    real = PromptItem(messages, video=video, image=_image())
    requests = build_requests(processor, [fixed, real], [4.0, 4.0], config=RolloutConfig(), seeds=[0, 1])
    # the engine derives seconds per patch as temporal_patch_size / fps: 2 / 2.0 = 1 s, and 2 / 4.0 for real
    assert [r["video_fps"] for r in requests] == [2.0, 4.0]


# ----------------------------------------------------------------------------------------- evaluation frames


def test_eval_frame_count_fps_samples_short_clips_as_the_reference(tmp_path):
    from care.eval_schema import EvalConfig
    from care.media.decode import decode_video
    from care.media.synth import write_video

    fixed = EvalConfig(checkpoint="c", data_root="d")
    fps = EvalConfig(checkpoint="c", data_root="d", frame_count="fps")
    assert fixed.frames.nframes == 16
    assert (fps.frames.nframes, fps.frames.fps, fps.frames.min_frames, fps.frames.max_frames) == (None, 2.0, 4, 16)
    kept = EvalConfig(checkpoint="c", data_root="d", frame_count="fps", frames={"nframes": 16, "max_pixels": 3136})
    assert kept.frames.nframes is None and kept.frames.max_pixels == 3136
    short = write_video(tmp_path / "short.mp4", n_frames=30, fps=10)  # 3 s
    long = write_video(tmp_path / "long.mp4", n_frames=100, fps=10)  # 10 s
    assert len(decode_video(short, fixed.frames).frames) == 16
    decoded = decode_video(short, fps.frames)  # 2 fps over 3 s: 6 frames, spread over the clip
    assert len(decoded.frames) == 6 and decoded.sample_fps == pytest.approx(2.0)
    assert decoded.indices == [round(x) for x in np.linspace(0, 29, 6)]
    assert len(decode_video(long, fps.frames).frames) == len(decode_video(long, fixed.frames).frames) == 16
    # an evaluation option: the RL run it belongs to keeps its id
    assert RLConfig(**BASE, eval={"frame_count": "fps"}).run_id() == RLConfig(**BASE).run_id()
    assert RLConfig(**BASE, eval_every=1, eval={"frame_count": "fps"}).eval_config("c").frames.nframes is None
