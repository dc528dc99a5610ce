"""Unset options are the paper's hyperparameters (docs/algorithm.md, "Defaults"); the demo config shrinks them."""

from __future__ import annotations

import yaml

from care.cli.run import default_config_path
from care.media import FrameSampling
from care.train.config import RLConfig


def test_rl_defaults_are_the_papers_run():
    cfg = RLConfig(model="m", data_root="d")
    assert cfg.iterations == 1500  # one epoch of the 6k subset at 4 prompts per iteration
    assert (cfg.rollout.group_size, cfg.rollout.prompts_per_iteration) == (8, 4)
    s = cfg.rollout.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (1.0, 0.95, 50, 768)
    o = cfg.optim
    assert (o.learning_rate, o.weight_decay, o.max_grad_norm, o.lr_scheduler, o.warmup_steps) == (
        1e-6, 0.01, 5.0, "cosine", 0)


def test_frame_defaults_are_the_papers_budgets():
    f = FrameSampling()
    assert (f.fps, f.min_frames, f.max_frames) == (2.0, 4, 16)
    assert f.max_pixels == 128 * 28 * 28 and f.image_max_pixels == 256 * 28 * 28


def test_the_demo_shrinks_them():
    demo = yaml.safe_load(default_config_path().read_text())
    assert demo["rl"]["iterations"] < 1500
    assert FrameSampling(**demo["frames"]).max_pixels == 56 * 56
