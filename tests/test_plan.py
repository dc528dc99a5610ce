"""``care plan``: visual tokens and parameters equal the real processor's and model's, configs that cannot fit are
refused naming the field (also by ``care rl`` before any work), the demo config passes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from care import plan as planning
from care.algo.prompt import build_messages
from care.config import load_config
from care.media.decode import decode_video, load_image
from care.media.sampling import FrameSampling
from care.models.inputs import PromptItem, encode_prompts
from care.models.loading import load_processor
from care.pipeline import PipelineConfig
from care.train.config import RLConfig
from tests.cli_helpers import care_in_process as _care

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "care" / "configs" / "demo.yaml"
SEEDBENCH = REPO / "data" / "seedbench_r1.yaml"
GPU_80 = planning.Hardware("gpu (given)", int(80 * planning.GIB), 8, int(2048 * planning.GIB), "8 x 80 GiB (test)")
GPU_141 = planning.Hardware("gpu (given)", int(141e9), 8, int(2048 * planning.GIB), "8 x 141 GB (test)")


def _one_row_root(tmp_path: Path, demo_root: Path, index: int) -> tuple[Path, dict]:
    """A data root whose training file holds only row ``index`` of the demo set (media linked from the demo)."""
    root = tmp_path / "one"
    (root / "annotations").mkdir(parents=True)
    rows = (Path(demo_root) / "annotations" / "training_6k.jsonl").read_text().splitlines()
    row = json.loads(rows[index])
    (root / "annotations" / "training_6k.jsonl").write_text(json.dumps(row) + "\n")
    for sub in ("videos", "images"):
        if (Path(demo_root) / sub).exists():
            (root / sub).symlink_to(Path(demo_root) / sub)
    return root, row


def _media(demo_root: Path, row: dict, kind: str) -> Path:
    sub = "videos" if kind == "video" else "images"
    name = row["video_basename"] if kind == "video" else row["current_observation_basename"]
    found = list((Path(demo_root) / sub).rglob(name))
    assert found, f"{name} not under {demo_root}/{sub}"
    return found[0]


@pytest.mark.parametrize("frames", [{"nframes": 4, "max_pixels": 3136, "image_max_pixels": 3136},
                                    {"nframes": 6, "max_pixels": 28 * 28 * 3, "image_max_pixels": 28 * 28 * 2}])
def test_visual_and_prompt_tokens_equal_the_processors(tmp_path, demo_root, tiny_model_dir, frames):
    root, row = _one_row_root(tmp_path, demo_root, 0)
    sampling = FrameSampling(**frames)
    video = decode_video(_media(demo_root, row, "video"), sampling)
    image = load_image(_media(demo_root, row, "image"), sampling)
    processor = load_processor(tiny_model_dir)
    options = [row["answer"], *row["negative_answers"]]
    batch = encode_prompts(processor, [PromptItem(build_messages(row["question"], options, has_video=True),
                                                  video=video.frames, image=image)], fps=video.sample_fps)
    ids = batch["input_ids"][0]
    real_video = int((ids == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum())
    real_image = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert real_video > 0 and real_image > 0

    cfg = RLConfig(model=str(tiny_model_dir), data_root=str(root), frames=sampling)
    model = planning.model_shape(str(tiny_model_dir))
    prompt = planning.prompt_shape(str(tiny_model_dir), str(root), cfg.train_annotations)
    assert prompt.exact
    source = (video.info.height, video.info.width)
    seq = planning.plan_rl(cfg, model, prompt, planning.hardware(), source=source).sequence
    assert (seq.video_tokens, seq.image_tokens) == (real_video, real_image)
    assert seq.prompt_tokens == int(batch["attention_mask"][0].sum())
    # without a source size the plan takes the largest frame the budget allows: never fewer tokens
    bound = planning.plan_rl(cfg, model, prompt, planning.hardware()).sequence
    assert bound.video_tokens >= real_video and bound.image_tokens >= real_image


def test_non_square_source_matches_the_processor(tiny_model_dir):
    # a 16:9 clip resized by care to the budget, then by the processor: the plan's count is the processor's
    sampling = FrameSampling(nframes=4, max_pixels=28 * 28 * 6, image_max_pixels=28 * 28 * 6)
    n, frame, image = planning.frame_plan(sampling, (360, 640))
    processor = load_processor(tiny_model_dir)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, *frame, 3), dtype=np.uint8)
    picture = rng.integers(0, 256, (*image, 3), dtype=np.uint8)
    batch = encode_prompts(processor, [PromptItem(build_messages("q", ["a", "b", "c", "d"], has_video=True),
                                                  video=frames, image=picture)], fps=2.0)
    grid_v, grid_i = batch["video_grid_thw"][0].prod().item(), batch["image_grid_thw"][0].prod().item()
    shape = planning.model_shape(str(tiny_model_dir)).processor
    assert planning.visual_tokens(shape, n, frame, image) == (grid_v // 4, grid_i // 4)


def test_parameter_count_equals_the_model(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir))
    shape = planning.model_shape(str(tiny_model_dir))
    assert shape.exact
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert shape.vision_parameters == sum(p.numel() for p in model.model.visual.parameters())
    assert shape.max_position_embeddings == model.config.text_config.max_position_embeddings
    # the built-in table's 7B: 8.29 B parameters (docs/scaling.md), 128,000 positions
    seven = planning.model_shape("Qwen/Qwen2.5-VL-7B-Instruct")
    assert not seven.exact and round(seven.parameters / 1e7) == 829
    assert seven.max_position_embeddings == 128000


def _seedbench(**rl) -> RLConfig:
    cfg = load_config(PipelineConfig, SEEDBENCH, {"rl": rl} if rl else {})
    return cfg.rl_config(cfg.model, cfg.data_root)


def _plan(cfg: RLConfig, hw: planning.Hardware) -> planning.Plan:
    return planning.plan_rl(cfg, planning.model_shape(cfg.model), planning.prompt_shape(cfg.model, None, None), hw)


def test_ddp_7b_is_refused_naming_parallelism():
    plan = _plan(_seedbench(optim={"parallelism": "ddp"}), GPU_80)
    assert not plan.ok
    with pytest.raises(planning.PlanError) as err:
        planning.check([plan])
    assert "optim.parallelism=fsdp2" in str(err.value)
    resident = sum(b for w, b in plan.peak.items if w.startswith(("policy", "EMA", "AdamW")))
    assert round(resident / 1e9) == 133  # 16 B/param at 8.29 B parameters: docs/scaling.md's 133 GB


def test_sequence_over_the_context_is_refused_naming_max_new_tokens():
    plan = _plan(_seedbench(rollout={"sampling": {"max_new_tokens": 130000}}), GPU_141)
    problems = " ".join(plan.problems)
    assert "rollout.sampling.max_new_tokens=130000" in problems and "max_position_embeddings=128,000" in problems


def test_seedbench_fits_8_h200_and_names_the_fix_on_80_gb():
    assert _plan(_seedbench(), GPU_141).ok
    on_80 = _plan(_seedbench(), GPU_80)
    assert not on_80.ok and "optim.gradient_checkpointing=true" in " ".join(on_80.problems)
    assert _plan(_seedbench(optim={"gradient_checkpointing": True}), GPU_80).ok


def test_demo_config_passes(care_home):
    cfg = load_config(PipelineConfig, DEMO, {})
    plans = planning.plan_pipeline_config(cfg)
    assert [p.kind for p in plans] == ["sft", "rl"] and all(p.ok for p in plans)
    assert all(p.sequence.total < p.sequence.limit for p in plans)


def test_cli_prints_the_table(capsys):
    code, out, err = _care(capsys, "plan", "--config", str(DEMO))
    assert code == 0, err
    assert "plan (rl)" in out and "plan (sft)" in out and "sequence per sample" in out
    assert "memory per device" in out and "fits" in out and "DOES NOT FIT" not in out


def test_cli_refuses_with_exit_2_naming_the_field(capsys):
    code, out, err = _care(capsys, "plan", "--config", str(SEEDBENCH), "--set", "rl.optim.parallelism=ddp",
                           "--device-memory-gib", "80", "--host-memory-gib", "2048")
    assert code == 2 and "DOES NOT FIT" in out
    assert err.startswith("error: ") and "optim.parallelism=fsdp2" in err


def test_care_rl_refuses_before_any_work(tmp_path, capsys, care_home, demo_root, tiny_model_dir):
    config = tmp_path / "rl.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "data_root": str(demo_root), "iterations": 1,
                                      "rollout": {"sampling": {"max_new_tokens": 5000}}}))
    code, out, err = _care(capsys, "rl", "--config", str(config))
    assert code == 2 and "plan (rl)" in out
    assert "rollout.sampling.max_new_tokens=5000" in err and "max_position_embeddings=4,096" in err
    assert not (care_home / "care.duckdb").exists() and not (care_home / "prefect").exists()
