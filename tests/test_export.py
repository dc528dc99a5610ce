"""``care export``: a trained checkpoint as a Hugging Face folder that ``from_pretrained`` loads and generates with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from care.errors import CareError
from care.models.rollout_config import RolloutConfig, SamplingParams
from care.store.rollout_log import SCORED_SCHEMA, read_rows, write_rows_atomic
from care.train import warm
from care.train.checkpoint import make_initial_checkpoint
from care.train.config import OptimConfig, ScoringConfig
from care.train.export import EXPORT_FILE, export_checkpoint, resolve_checkpoint
from care.train.optimise_stage import run_optimisation_stage
from care.train.rollout import run_rollout_stage
from care.train.scoring import run_scoring_stage
from tests.fault_helpers import care as _care
from tests.rl_helpers import cache_demo


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root, tiny_model_dir):
    """A workspace with run ``exp`` whose newest checkpoint (iter-00001) is one real RL update of the tiny model."""
    home = tmp_path_factory.mktemp("export_home")
    data = cache_demo(home, demo_root)
    ckpts = home / "runs" / "exp" / "checkpoints"
    ck0 = make_initial_checkpoint(tiny_model_dir, ckpts / "iter-00000")
    samples = data.load()
    gen = run_rollout_stage(run_id="exp", iteration=0, checkpoint=ck0, samples=samples.samples[:2], cache=data.cache(),
                            config=RolloutConfig(group_size=4, prompts_per_iteration=2,
                                                 sampling=SamplingParams(max_new_tokens=12)),
                            seed=0, out_dir=home / "rollouts")
    sc = run_scoring_stage(generated_path=gen["path"], checkpoint=ck0, samples=samples.by_id(), cache=data.cache(),
                           config=ScoringConfig(), algo="grpo_care")
    rows = read_rows(Path(sc["path"]))
    for i, r in enumerate(rows):
        r["advantage"] = 1.0 if i % 2 else -1.0
    write_rows_atomic(Path(sc["path"]), rows, SCORED_SCHEMA)
    run_optimisation_stage(checkpoint_in=ck0, checkpoint_out=ckpts / "iter-00001", generated_path=gen["path"],
                           scored_path=sc["path"], data=data, config=OptimConfig(learning_rate=1e-3), total_steps=4,
                           temperature=1.0, max_new_tokens=12, iteration=0)
    warm.clear()
    return {"home": home, "checkpoint": ckpts / "iter-00001"}


def _generate(folder: Path) -> list[int]:
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Which?"}]}],
                                         add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_float32_export_is_the_master_weights_and_loads_with_from_pretrained(trained, tmp_path):
    out = tmp_path / "fp32"
    result = export_checkpoint(trained["checkpoint"], out, dtype="float32")
    want = load_file(trained["checkpoint"] / "policy" / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)  # the exact state a resume continues from
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["iteration"] == 1 and meta["step"] == 1 and meta["dtype"] == "float32" and meta["state_id"]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert name in result["files"] or (out / name).is_file(), name
    assert len(_generate(out)) >= 1


def test_bfloat16_export_for_serving(trained, tmp_path):
    out = tmp_path / "bf16"
    export_checkpoint(trained["checkpoint"], out)
    weights = load_file(out / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    assert AutoModelForImageTextToText.from_pretrained(out).dtype == torch.bfloat16
    with pytest.raises(CareError, match="not empty"):
        export_checkpoint(trained["checkpoint"], out)
    with pytest.raises(CareError, match="--dtype"):
        export_checkpoint(trained["checkpoint"], tmp_path / "x", dtype="float8")


def test_run_id_means_its_newest_checkpoint_and_a_bad_name_is_refused(trained):
    runs = trained["home"] / "runs"
    assert resolve_checkpoint("exp", runs) == trained["checkpoint"]
    with pytest.raises(CareError, match="care runs"):
        resolve_checkpoint("nope", runs)


def test_care_export_command(trained, tmp_path):
    out = tmp_path / "cli"
    proc = _care(trained["home"], "--json", "export", "exp", str(out), "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["checkpoint"].endswith("iter-00001")
    assert (out / "model.safetensors").is_file()
