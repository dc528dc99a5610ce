"""Checkpoints: round trip of weights, optimizer, scheduler and RNG; atomic replace; corruption refused."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

from care.errors import CareError
from care.train.checkpoint import (
    CheckpointError,
    TrainingState,
    is_complete,
    load_checkpoint_state,
    save_checkpoint,
)


def _tiny_lm(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(cfg)


def _train_step(model, optimizer, scheduler):
    ids = torch.randint(0, 64, (2, 8))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _setup(seed=0):
    model = _tiny_lm(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = transformers.get_cosine_schedule_with_warmup(opt, 0, 10)
    return model, opt, sched


def test_round_trip_continues_exactly(tmp_path):
    model, opt, sched = _setup()
    for _ in range(2):
        _train_step(model, opt, sched)
    ckpt = save_checkpoint(
        tmp_path / "step-2", policy=model, reference=_tiny_lm(1), optimizer=opt, scheduler=sched,
        state=TrainingState(step=2, iteration=1, data_cursor={"epoch": 0, "offset": 8}),
    )
    # the uninterrupted continuation
    _train_step(model, opt, sched)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    # a fresh process would do this: weights via from_pretrained, the rest via load_checkpoint_state
    resumed = Qwen2ForCausalLM.from_pretrained(ckpt / "policy")
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.01)
    sched2 = transformers.get_cosine_schedule_with_warmup(opt2, 0, 10)
    torch.manual_seed(12345)  # scrambled; the checkpoint's RNG must win
    state = load_checkpoint_state(ckpt, optimizer=opt2, scheduler=sched2)
    assert state.step == 2 and state.data_cursor == {"epoch": 0, "offset": 8}
    _train_step(resumed, opt2, sched2)
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_rng_restored_for_python_numpy_torch(tmp_path):
    model = _tiny_lm()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    ckpt = save_checkpoint(tmp_path / "c", policy=model)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    load_checkpoint_state(ckpt)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_no_pickle_files_written(tmp_path):
    model, opt, sched = _setup()
    _train_step(model, opt, sched)
    ckpt = save_checkpoint(tmp_path / "c", policy=model, optimizer=opt, scheduler=sched)
    suffixes = {p.suffix for p in ckpt.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors"}, suffixes


def test_truncated_file_is_refused_with_its_path(tmp_path):
    model, opt, sched = _setup()
    _train_step(model, opt, sched)
    ckpt = save_checkpoint(tmp_path / "c", policy=model, optimizer=opt)
    target = ckpt / "optimizer.safetensors"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: truncated"):
        load_checkpoint_state(ckpt, optimizer=opt)
    assert not is_complete(ckpt)


def test_altered_file_is_refused(tmp_path):
    model, *_ = _setup()
    ckpt = save_checkpoint(tmp_path / "c", policy=model)
    state = ckpt / "state.json"
    data = json.loads(state.read_text())
    data["step"] = 999
    text = json.dumps(data, indent=2, sort_keys=True)
    state.write_text(text[: len(state.read_text())].ljust(len(state.read_text())))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint_state(ckpt)


def test_missing_manifest_means_incomplete(tmp_path):
    model, *_ = _setup()
    ckpt = save_checkpoint(tmp_path / "c", policy=model)
    (ckpt / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint_state(ckpt)


def test_replace_is_atomic_and_leaves_no_temp(tmp_path):
    model, *_ = _setup()
    save_checkpoint(tmp_path / "c", policy=model, state=TrainingState(step=1))
    save_checkpoint(tmp_path / "c", policy=model, state=TrainingState(step=2))
    assert load_checkpoint_state(tmp_path / "c").step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    model, *_ = _setup()
    save_checkpoint(tmp_path / "c", policy=model, state=TrainingState(step=1))

    class Boom(torch.nn.Module):
        def save_pretrained(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c", policy=Boom(), state=TrainingState(step=2))
    assert load_checkpoint_state(tmp_path / "c").step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_checkpoint_write_removes_stale_temp_folders_only(tmp_path, tiny_model_dir):
    import os
    import time

    from care.models.loading import load_model
    from care.train.checkpoint import STALE_TEMP_S, save_checkpoint

    runs = tmp_path / "checkpoints"
    stale, fresh = runs / ".tmp-iter-00001-deadbeef", runs / ".tmp-iter-00002-inflight"
    for d in (stale, fresh):
        (d / "policy").mkdir(parents=True)
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    save_checkpoint(runs / "iter-00003", policy=load_model(tiny_model_dir))
    assert not stale.exists()  # left by a killed write
    assert fresh.exists()  # may be another process's write in progress
    assert sorted(p.name for p in runs.iterdir()) == [".tmp-iter-00002-inflight", "iter-00003"]


def _files(ckpt):
    return json.loads((ckpt / "MANIFEST.json").read_text())["files"]


def test_unchanged_reference_is_linked_from_the_previous_checkpoint(tmp_path):
    reference = _tiny_lm(1)
    first = save_checkpoint(tmp_path / "a", policy=_tiny_lm(0), reference=reference)
    fresh = save_checkpoint(tmp_path / "fresh", policy=_tiny_lm(2), reference=reference)
    linked = save_checkpoint(tmp_path / "b", policy=_tiny_lm(2), reference=reference, reference_from=first)
    assert is_complete(linked)
    ref_files = [name for name in _files(linked) if name.startswith("reference/")]
    assert ref_files and "reference/model.safetensors" in ref_files
    for name in ref_files:
        assert (linked / name).stat().st_ino == (first / name).stat().st_ino, name  # the same file, not a copy
        assert _files(linked)[name] == _files(fresh)[name], name  # byte for byte what a fresh save writes
    # the source checkpoint can go (pruning): the linked one stays whole
    import shutil

    shutil.rmtree(first)
    assert is_complete(linked)
    loaded = Qwen2ForCausalLM.from_pretrained(linked / "reference")
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_altered_source_reference_is_not_linked(tmp_path):
    reference = _tiny_lm(1)
    first = save_checkpoint(tmp_path / "a", policy=_tiny_lm(0), reference=reference)
    weights = first / "reference" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte in the last tensor: still loadable, but not the checkpoint's file
    weights.write_bytes(bytes(blob))
    linked = save_checkpoint(tmp_path / "b", policy=_tiny_lm(2), reference=reference, reference_from=first)
    assert is_complete(linked)
    assert (linked / "reference" / "model.safetensors").stat().st_ino != weights.stat().st_ino
    loaded = Qwen2ForCausalLM.from_pretrained(linked / "reference")
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_unchanged_processor_is_linked_and_equals_a_fresh_save(tmp_path, tiny_model_dir):
    from care.models.loading import load_model, load_processor

    model, processor = load_model(tiny_model_dir), load_processor(tiny_model_dir)
    first = save_checkpoint(tmp_path / "a", policy=model, processor=processor)
    fresh = save_checkpoint(tmp_path / "fresh", policy=model, processor=processor)
    linked = save_checkpoint(tmp_path / "b", policy=model, processor=processor, processor_from=first)
    assert is_complete(linked) and _files(linked) == _files(fresh)  # same files, same bytes
    processor_files = [n for n in _files(linked) if n.startswith("policy/") and "safetensors" not in n
                       and n not in ("policy/config.json", "policy/generation_config.json")]
    assert len(processor_files) >= 3  # tokenizer, its config, the image / video processor configs
    for name in processor_files:
        assert (linked / name).stat().st_ino == (first / name).stat().st_ino, name
    for name in ("policy/model.safetensors", "policy/config.json"):
        assert (linked / name).stat().st_ino != (first / name).stat().st_ino, name  # written by the model save
    # an altered source file is not carried over: the processor is written from the object instead
    victim = first / "policy" / "tokenizer_config.json"
    victim.write_text(victim.read_text().replace("{", "{ ", 1))
    again = save_checkpoint(tmp_path / "c", policy=model, processor=processor, processor_from=first)
    assert is_complete(again) and _files(again) == _files(fresh)


def test_retention_keeps_the_newest_and_every_mth_and_ignores_incomplete(tmp_path):
    from care.train.checkpoint import prune_checkpoints

    model, *_ = _setup()
    for n in (0, 1, 2, 3, 4, 5, 6):
        save_checkpoint(tmp_path / f"iter-{n:05d}", policy=model, state=TrainingState(iteration=n))
    (tmp_path / "iter-00007").mkdir()  # no manifest: never a candidate (a write may still be finishing it)
    (tmp_path / ".tmp-iter-00008-abcd").mkdir()
    removed = prune_checkpoints(tmp_path, 2, keep_every=3)
    assert sorted(p.name for p in removed) == ["iter-00000", "iter-00001", "iter-00002", "iter-00004"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-iter-00008-abcd", "iter-00003", "iter-00005",
                                                         "iter-00006", "iter-00007"]
    assert prune_checkpoints(tmp_path, 0) == []  # 0 keeps all


def test_size_check_is_cheap_and_full_check_reads_every_byte(tmp_path):
    model, *_ = _setup()
    ckpt = save_checkpoint(tmp_path / "c", policy=model)
    weights = ckpt / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    weights.write_bytes(bytes(data))
    assert is_complete(ckpt, full=False)  # the per-iteration bookkeeping check: presence and sizes
    assert not is_complete(ckpt)  # loading verifies every byte
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint_state(ckpt)


def test_background_write_holds_the_snapshot_not_the_live_weights(tmp_path, tiny_model_dir):
    """The trainer goes on updating its weights while a background write runs; the checkpoint holds the values
    of when it was asked for, and a failed write surfaces at the next wait."""
    from care.train.trainer import WRITER, restore, save_trainer

    ck0 = save_checkpoint(tmp_path / "iter-00000", policy=_load(tiny_model_dir), reference=_load(tiny_model_dir),
                          processor=transformers.AutoProcessor.from_pretrained(tiny_model_dir))
    trainer = restore(ck0, device=torch.device("cpu"), state_id="s0")
    with torch.no_grad():
        for p in trainer.policy.parameters():
            p.add_(1.0)
    want = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    save_trainer(trainer, tmp_path / "iter-00001", background=True)
    with torch.no_grad():  # the next iteration's update, while the write may still run
        for p in trainer.policy.parameters():
            p.mul_(0.0)
    done = WRITER.wait()
    assert [d["path"] for d in done] == [str(tmp_path / "iter-00001")]
    got = _load(tmp_path / "iter-00001" / "policy").state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert is_complete(tmp_path / "iter-00001")
    WRITER.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(CareError, match="disk full"):
        WRITER.wait()
    assert WRITER.wait() == []  # reported once


def _load(folder):
    from care.models.loading import load_model

    return load_model(folder, dtype=torch.float32)
