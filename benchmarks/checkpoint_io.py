"""Checkpoint cost per RL iteration: the old design (a synchronous checkpoint every iteration, all kept) against
the new one (every K iterations, written from a snapshot in the background, the newest 2 kept).

For each model (the demo's tiny Qwen2.5-VL, and a random-weight Qwen2.5-VL of a real width that fits in 24 GB
with its snapshot) it builds the resident training state (fp32 policy, fp32 EMA reference, AdamW moments after
one step) and times the real writes of ``care.train.trainer.save_trainer``:

- old: per iteration one synchronous write; the reference is hard-linked in 9 of 10 iterations (the EMA moves
  it every 10 optimizer steps), so bytes per iteration = policy + moments + reference / 10;
- new: one write every K iterations (policy, reference and moments: the EMA has moved in between); what
  blocks the trainer is the snapshot (CPU copies), the write itself overlaps the next iterations.

It prints bytes written and seconds the trainer waits per iteration, both designs, as ratios, plus the write
and sha256 throughputs measured here that docs/scaling.md uses for its projection.

    python benchmarks/checkpoint_io.py [--K 10] [--json] [--skip-large]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from care.data.demo import demo_corpus  # noqa: E402
from care.models.loading import load_model, load_processor  # noqa: E402
from care.models.tiny import make_tiny_model  # noqa: E402
from care.train.toolkit import make_optimizer, make_scheduler  # noqa: E402
from care.train.trainer import WRITER, Trainer, save_trainer  # noqa: E402

# a Qwen2.5-VL-3B-wide text stack (hidden 2048, 16 heads, 2 KV heads) with 12 layers, and a 1280-wide vision
# tower of depth 4: ~0.47 B parameters, whose state (fp32 policy, reference and 2 moments: 7.5 GB) and its
# snapshot fit in 24 GB
LARGE = {"hidden_size": 2048, "num_layers": 12, "num_heads": 16, "num_kv_heads": 2, "vision_hidden_size": 1280,
         "vision_depth": 4}


def _trainer(model_dir: Path) -> Trainer:
    policy = load_model(model_dir, dtype=torch.float32)
    reference = load_model(model_dir, dtype=torch.float32).requires_grad_(False)
    optimizer = make_optimizer(policy, learning_rate=1e-6, betas=(0.9, 0.999), weight_decay=0.01)
    for p in policy.parameters():  # one step on a random gradient: AdamW's moments exist, as in a run
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler = make_scheduler(optimizer, kind="constant", warmup_steps=0, total_steps=1)
    return Trainer(policy=policy, reference=reference, processor=load_processor(model_dir), state_id="bench",
                   iteration=0, step=1, optimizer=optimizer, scheduler=scheduler)


def _new_bytes(folder: Path) -> int:
    """Bytes of the checkpoint's files that are not hard links to an earlier checkpoint's."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.stat().st_nlink == 1)


def _save(trainer: Trainer, folder: Path, *, background: bool, reference_moved: bool) -> tuple[float, float]:
    """(seconds the trainer waits, seconds until the checkpoint is complete) of one write."""
    if reference_moved:
        trainer.ema_updates += 1  # the reference differs from the source's: it is written, not linked
    trainer.iteration += 1
    t0 = time.perf_counter()
    save_trainer(trainer, folder, background=background)
    blocked = time.perf_counter() - t0
    WRITER.wait()
    return blocked, time.perf_counter() - t0


def measure(name: str, model_dir: Path, work: Path, K: int) -> dict:
    trainer = _trainer(model_dir)
    params = sum(p.numel() for p in trainer.policy.parameters())
    ckpts = work / name
    _save(trainer, ckpts / "base", background=False, reference_moved=True)  # the source of links
    # old design: synchronous, every iteration; 9 of 10 link the reference
    old_linked_wait, _ = _save(trainer, ckpts / "old-linked", background=False, reference_moved=False)
    old_linked_bytes = _new_bytes(ckpts / "old-linked")
    old_full_wait, _ = _save(trainer, ckpts / "old-full", background=False, reference_moved=True)
    old_full_bytes = _new_bytes(ckpts / "old-full")
    old_wait = 0.9 * old_linked_wait + 0.1 * old_full_wait
    old_bytes = 0.9 * old_linked_bytes + 0.1 * old_full_bytes
    # new design: one background write (reference moved since the last) every K iterations
    new_block, new_complete = _save(trainer, ckpts / "new", background=True, reference_moved=True)
    new_ckpt_bytes = _new_bytes(ckpts / "new")
    state_bytes = sum(p.stat().st_size for p in (ckpts / "new").rglob("*") if p.is_file())
    blob = (ckpts / "new" / "optimizer.safetensors").read_bytes()
    t0 = time.perf_counter()
    hashlib.sha256(blob).hexdigest()
    sha_mb_s = len(blob) / 1e6 / (time.perf_counter() - t0)
    out = {
        "model": name, "parameters": params, "checkpoint_bytes": state_bytes,
        "bytes_per_parameter": state_bytes / params,
        "old": {"bytes_per_iteration": old_bytes, "wait_s_per_iteration": old_wait,
                "write_s_linked_reference": old_linked_wait, "write_s_full": old_full_wait},
        "new": {"K": K, "bytes_per_iteration": new_ckpt_bytes / K, "wait_s_per_iteration": new_block / K,
                "snapshot_s": new_block, "background_write_s": new_complete - new_block},
        "ratio_bytes_old_over_new": old_bytes / (new_ckpt_bytes / K),
        "ratio_wait_old_over_new": old_wait / max(new_block / K, 1e-9),
        "write_mb_per_s": old_full_bytes / 1e6 / old_full_wait, "sha256_mb_per_s": sha_mb_s,
    }
    del trainer
    shutil.rmtree(ckpts, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, default=10, help="checkpoint_every of the new design")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--skip-large", action="store_true", help="only the tiny demo model")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="care-ckpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = demo_corpus()
    results = []
    models = [("tiny demo Qwen2.5-VL", {})] + ([] if a.skip_large else [("Qwen2.5-VL, 3B width, 12 layers", LARGE)])
    for name, dims in models:
        folder = work / f"model-{len(results)}"
        if not (folder / "config.json").is_file():
            make_tiny_model(folder, corpus=corpus, **dims)
        results.append(measure(name, folder, work, a.K))
    if a.workdir is None:  # the models and checkpoints (GBs for the large one) are scratch
        shutil.rmtree(work, ignore_errors=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "K": a.K, "models": results}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    for r in results:
        print(f"{r['model']}: {r['parameters'] / 1e6:.2f} M parameters, checkpoint {r['checkpoint_bytes'] / 1e6:.1f} MB "
              f"({r['bytes_per_parameter']:.1f} B/parameter)")
        print(f"  bytes per iteration: old {r['old']['bytes_per_iteration'] / 1e6:.1f} MB, new (K={a.K}) "
              f"{r['new']['bytes_per_iteration'] / 1e6:.1f} MB -> {r['ratio_bytes_old_over_new']:.1f}x fewer")
        print(f"  trainer waits per iteration: old {r['old']['wait_s_per_iteration']:.3f} s, new "
              f"{r['new']['wait_s_per_iteration']:.4f} s -> {r['ratio_wait_old_over_new']:.1f}x less "
              f"(snapshot {r['new']['snapshot_s']:.3f} s, background write {r['new']['background_write_s']:.2f} s)")
        print(f"  write {r['write_mb_per_s']:.0f} MB/s, sha256 {r['sha256_mb_per_s']:.0f} MB/s")


if __name__ == "__main__":
    main()
