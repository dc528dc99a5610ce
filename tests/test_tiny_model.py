"""The tiny offline Qwen2.5-VL: saved with save_pretrained, loaded back through from_pretrained, run end to end."""

from __future__ import annotations

import hashlib
import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from care.algo.prompt import build_messages
from care.data.annotations import load_annotations
from care.models.inputs import PromptItem, encode_prompts, split_completions
from care.models.loading import (
    ModelLoadError,
    load_model,
    load_processor,
    suppressed_token_ids,
    vision_token_ids,
)
from care.models.tiny import TINY_MANIFEST, make_tiny_model

CORPUS = ["What should I do next?\nOptions:\nA. pick up the red marker\n", "The agent walks to the red marker."]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_weights_other_seed_differs(tmp_path):
    a = make_tiny_model(tmp_path / "a", corpus=CORPUS, seed=7)
    b = make_tiny_model(tmp_path / "b", corpus=CORPUS, seed=7)
    c = make_tiny_model(tmp_path / "c", corpus=CORPUS, seed=8)
    assert sha256(a / "model.safetensors") == sha256(b / "model.safetensors")
    assert sha256(a / "tokenizer.json") == sha256(b / "tokenizer.json")
    assert sha256(a / "model.safetensors") != sha256(c / "model.safetensors")
    # replaced atomically: making it again in place leaves one complete folder and no temp siblings
    make_tiny_model(a, corpus=CORPUS, seed=7)
    assert sha256(a / "model.safetensors") == sha256(b / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_folder_contents_config_and_generation_config(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "processor_config.json", TINY_MANIFEST} <= names
    manifest = json.loads((tiny_model_dir / TINY_MANIFEST).read_text())
    assert manifest["hidden_size"] == 64 and manifest["num_layers"] == 2
    assert 200_000 < manifest["parameters"] < 500_000
    model = load_model(tiny_model_dir)
    processor = load_processor(tiny_model_dir)
    tok = processor.tokenizer
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert model.config.text_config.vocab_size == len(tok) < 1024
    gen = model.generation_config
    assert gen.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert gen.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert gen.do_sample is False
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert tok.padding_side == "left"


def test_suppressed_ids_cover_vision_and_specials_but_not_eos(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    tok = processor.tokenizer
    vision = vision_token_ids(processor)
    assert {tok.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>",
                                                   "<|vision_end|>")} <= set(vision)
    suppressed = suppressed_token_ids(processor)
    assert set(vision) <= set(suppressed)
    assert tok.eos_token_id not in suppressed
    assert {tok.pad_token_id, tok.convert_tokens_to_ids("<|im_start|>")} <= set(suppressed)
    assert tok.convert_tokens_to_ids("A") not in suppressed


def test_missing_files_give_one_line_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match=r"model folder .*nope does not exist"):
        load_model(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError) as err:
        load_model(broken)
    assert str(err.value) == (f"{broken}: no weights file (expected model.safetensors or "
                              "model.safetensors.index.json); the folder must come from save_pretrained")
    with pytest.raises(ModelLoadError, match="no tokenizer file"):
        load_processor(broken)
    with pytest.raises(ModelLoadError, match="unknown dtype 'float99'"):
        load_model(tiny_model_dir, dtype="float99")


def decode_frames(path, count: int) -> tuple[np.ndarray, float]:
    """All frames of an mp4 with PyAV, then ``count`` uniformly sampled ones; returns (frames, sampled fps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    idx = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return frames[idx], fps * (count - 1) / (len(frames) - 1)


def resize(frames: np.ndarray, side: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.BILINEAR)) for f in frames])


def test_forward_and_generate_with_demo_video_and_image(tiny_model_dir, demo_root):
    """The issue's "done means": real files -> real processor -> forward -> generate with placeholders suppressed."""
    samples = load_annotations(demo_root / "annotations" / "validation_L1.jsonl", demo_root).samples
    sample = next(s for s in samples if s.video is not None)
    frames, fps = decode_frames(demo_root / sample.video, 4)
    assert frames.shape == (4, 64, 64, 3)
    video = resize(frames, 56)
    image = resize(np.asarray(Image.open(demo_root / sample.image).convert("RGB"))[None], 56)[0]
    model, processor = load_model(tiny_model_dir), load_processor(tiny_model_dir)
    item = PromptItem(build_messages(sample.question, sample.options, has_video=True), video=video, image=image)
    batch = encode_prompts(processor, [item], fps=fps)
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([2 / fps])
    tok = processor.tokenizer
    assert (batch["input_ids"] == tok.convert_tokens_to_ids("<|video_pad|>")).sum() == 8
    assert (batch["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum() == 4

    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()

    suppressed = suppressed_token_ids(processor)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=24, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             suppress_tokens=suppressed)
    (completion,) = split_completions(out, batch["input_ids"].shape[1], tok.eos_token_id)
    assert 0 < len(completion) <= 24
    assert not set(completion) & set(vision_token_ids(processor))
    assert not set(completion) & (set(suppressed))
    assert isinstance(processor.decode(completion), str)


def test_cli_models_tiny(tmp_path, capsys):
    from care.cli import main

    main(["--json", "models", "tiny", str(tmp_path / "m"), "--seed", "3"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["model_dir"] == str((tmp_path / "m").resolve()) and payload["generated_demo"] is False
    # --data-root without annotations: a demo set is generated there and its text trains the tokenizer
    # (small, so the test stays fast: the generator's defaults are exercised in test_demo_data)
    from care.data.demo import make_demo_benchmark

    make_demo_benchmark(tmp_path / "d", train=4, val=2)
    main(["models", "tiny", str(tmp_path / "m2"), "--data-root", str(tmp_path / "d")])
    assert f"wrote tiny Qwen2.5-VL to {tmp_path / 'm2'}" in capsys.readouterr().out
    assert load_processor(tmp_path / "m2").tokenizer.eos_token == "<|im_end|>"


def test_one_file_model_loads_and_checkpoints_without_transformers_bars(tiny_model_dir, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from care.models.loading import load_model
    from care.train.checkpoint import save_checkpoint

    assert hf_logging.is_progress_bar_enabled()
    model = load_model(tiny_model_dir)
    save_checkpoint(tmp_path / "ck", policy=model)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert hf_logging.is_progress_bar_enabled()  # the setting is restored


def test_cli_models_tiny_vllm_variant_has_head_dim_32(tmp_path, capsys):
    from transformers import AutoConfig

    from care.cli import main

    main(["--json", "models", "tiny", str(tmp_path / "v"), "--variant", "vllm"])
    assert json.loads(capsys.readouterr().out)["variant"] == "vllm"
    text = AutoConfig.from_pretrained(tmp_path / "v").get_text_config()
    assert text.hidden_size // text.num_attention_heads == 32  # what vLLM's attention accepts at the least
    with pytest.raises(SystemExit) as err:
        main(["models", "tiny", str(tmp_path / "x"), "--variant", "huge"])
    assert err.value.code != 0 and "unknown variant 'huge'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
