"""Generate the demo benchmark: the exact SEED-Bench-R1 layout with real h264 videos, on any machine.

Layout written under ``out_dir``::

    annotations/training_6k.jsonl            training rows (answer + negative_answers)
    annotations/training_with_cot_6k.jsonl   the same rows + "cot" (reasoning that names the step)
    annotations/validation_L{1,2,3}.jsonl    choice_a..choice_d + golden_choice_idx (+ answer)
    videos/<source>/<sample_id>.mp4          h264 (libx264, yuv420p), ``frames`` frames at ``fps``
    images/<source>/<sample_id>.png          the current observation (= the last frame)
    demo_manifest.json                       the generation parameters and counts

Levels: train and L1 = the "room" environment and the ``target`` task; L2 = the "garden" environment (other
background, shades, layout: markers at the edges), same task; L3 = the "lab" environment and the ``lamp`` task.
Every row keeps the generator's truth in a ``demo`` field (task, variant, slot colours, answer colour, agent
track), which the loader passes through in ``Sample.meta["extra"]``.

Options: the three negatives are exactly the other three colours in the scene, so a text-only guesser is at
chance; validation choices are written in canonical (sorted) order, the order the loader uses with
``shuffle_options=False``. ``hard_share`` is the share of ``shuffled``-variant (hard) samples in every split
(see ``care.data.demo_world``): with canonical option order the tiny model learns the ``fixed`` (easy) variant
within the demo's SFT budget and stays at chance on the hard one, so accuracy after SFT plateaus near
``1 - 0.75 * hard_share`` instead of jumping to 100 % (measured curves: ``docs/demo.md``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from care.algo.prompt import build_prompt_text
from care.data.demo_world import (
    ENVIRONMENTS,
    QUESTIONS,
    RENDERERS,
    Environment,
    Scene,
    option_text,
    reasoning_text,
)
from care.data.schema import ANNOTATION_FILES, LETTERS
from care.errors import CareError

LEVELS = {  # split -> (environment, task, video_source)
    "train": ("room", "target", "demo_room"),
    "L1": ("room", "target", "demo_room"),
    "L2": ("garden", "target", "demo_garden"),
    "L3": ("lab", "lamp", "demo_lab"),
}
SPLIT_CODES = {"train": 0, "L1": 1, "L2": 2, "L3": 3}
# L3 rows carry EgoPlan-Bench2's `domain` and `scenario` fields, as the real L3 is built from it; the demo's
# domains are labels dealt round-robin (the scenes do not differ by domain): they exercise the per-domain
# breakdown of the evaluation (L3/Daily life, ...), they do not measure anything
L3_DOMAINS = ("Daily life", "Hobbies", "Recreation", "Work")


class DemoError(CareError):
    """The demo benchmark cannot be written (bad size, unwritable folder)."""


def video_codec() -> str:
    """libx264 when this PyAV build has it (h264 mp4), else mpeg4."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 (T, H, W, 3) frames; single-threaded, no SIMD, so the bytes are reproducible."""
    codec = video_codec()
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        if codec == "libx264":
            # asm=0: with x264's SIMD code paths the same frames gave different bytes now and then (measured:
            # 2 distinct outputs in 40 encodes); without them, 1 in 40. Costs nothing at these frame sizes.
            stream.options = {"crf": "12", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        else:
            stream.bit_rate = 2_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def level_environment(split: str, index: int) -> Environment:
    """The environment a row of ``split`` is rendered in.

    Every L2 row is in the garden: its background and its agent. Every other L2 row ("near") keeps the room's
    marker shades and corner layout (``garden_near``); the others ("far") also have the garden's shades, floor grid and markers at
    the edges. Measured on the demo's SFT checkpoint (docs/demo.md): the tiny model carries its skill to the near
    rows and not to the far ones, so L2 is learnable in part without being the training distribution.

    >>> [level_environment("L2", i).name for i in range(3)], level_environment("L1", 0).name
    (['garden_near', 'garden', 'garden_near'], 'room')
    """
    if split == "L2" and index % 2 == 0:
        return ENVIRONMENTS["garden_near"]
    return ENVIRONMENTS[LEVELS[split][0]]


def _scene(split: str, index: int, *, seed: int, hard_share: float, size: int, frames: int) -> Scene:
    task = LEVELS[split][1]
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    variant = "shuffled" if rng.random() < hard_share else "fixed"
    return RENDERERS[task](rng, level_environment(split, index), variant, size=size, frames=frames)


def _row(split: str, index: int, scene: Scene, *, image_only: bool, fps: int) -> dict:
    _, task, source = LEVELS[split]
    sample_id = f"demo-{split.lower()}-{index:05d}"
    answer = option_text(task, scene.truth)
    negatives = [option_text(task, c) for c in scene.colors if c != scene.truth]
    progress = [] if image_only else [
        {"step": 1, "narration": "progress so far", "frames": len(scene.frames), "fps": fps}]
    row = {
        "sample_id": sample_id,
        "question": QUESTIONS[task],
        "task_progress_metadata": progress,
        "video_source": source,
        "video_basename": "" if image_only else f"{sample_id}.mp4",
        "current_observation_basename": f"{sample_id}.png",
    }
    if split == "train":
        row.update(answer=answer, negative_answers=negatives)
    else:
        choices = sorted([answer, *negatives])
        row.update({f"choice_{letter.lower()}": text for letter, text in zip(LETTERS, choices, strict=True)})
        row.update(golden_choice_idx=LETTERS[choices.index(answer)], answer=answer)
    if split == "L3":
        row.update(domain=L3_DOMAINS[index % len(L3_DOMAINS)], scenario=task)
    row["demo"] = scene.metadata()
    return row


def make_demo_benchmark(
    out_dir: str | Path,
    *,
    train: int = 2000,
    val: int = 200,
    seed: int = 0,
    hard_share: float = 0.5,
    image_only_share: float = 0.1,
    size: int = 64,
    frames: int = 8,
    fps: int = 4,
) -> Path:
    """Write the demo benchmark (layout in the module docstring) to ``out_dir`` and return it.

    ``train`` rows (train and CoT files), ``val`` rows per level. ``size`` x ``size`` frames (even, >= 32),
    ``frames`` frames per clip at ``fps``. Deterministic for a seed (annotations, images and video bytes).
    Written to a temporary sibling folder and renamed; an existing ``out_dir`` is replaced.
    """
    if size < 32 or size % 2:
        raise DemoError(f"size must be an even number >= 32 (h264 needs even sides), got {size}")
    if frames < 2 or fps < 1 or train < 0 or val < 0:
        raise DemoError(f"need frames >= 2, fps >= 1, train/val >= 0 (got frames={frames}, fps={fps}, "
                        f"train={train}, val={val})")
    if not (0.0 <= hard_share <= 1.0 and 0.0 <= image_only_share <= 1.0):
        raise DemoError("hard_share and image_only_share must lie in [0, 1]")
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise DemoError(f"cannot write the demo benchmark to {out_dir}: {exc.strerror}") from exc
    (tmp / "annotations").mkdir()
    counts = {}
    for split, n in (("train", train), ("L1", val), ("L2", val), ("L3", val)):
        rows = _write_split(tmp, split, n, seed=seed, hard_share=hard_share, image_only_share=image_only_share,
                            size=size, frames=frames, fps=fps)
        counts[split] = len(rows)
    manifest = {"seed": seed, "train": train, "val": val, "hard_share": hard_share,
                "image_only_share": image_only_share, "size": size, "frames": frames, "fps": fps,
                "codec": video_codec(), "counts": counts}
    (tmp / "demo_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _write_split(root: Path, split: str, n: int, *, seed: int, hard_share: float, image_only_share: float,
                 size: int, frames: int, fps: int) -> list[dict]:
    source = LEVELS[split][2]
    (root / "videos" / source).mkdir(parents=True, exist_ok=True)
    (root / "images" / source).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scene = _scene(split, i, seed=seed, hard_share=hard_share, size=size, frames=frames)
        # decided from a separate stream so changing the share does not change the scenes
        image_only = bool(np.random.default_rng([seed, SPLIT_CODES[split], i, 1]).random() < image_only_share)
        row = _row(split, i, scene, image_only=image_only, fps=fps)
        Image.fromarray(scene.frames[-1]).save(root / "images" / source / row["current_observation_basename"])
        if not image_only:
            write_mp4(root / "videos" / source / row["video_basename"], scene.frames, fps)
        rows.append(row)
    names = ["train", "train_cot"] if split == "train" else [split]
    for name in names:
        with (root / "annotations" / ANNOTATION_FILES[name]).open("w") as fh:
            for row in rows:
                if name == "train_cot":
                    row = {**row, "cot": reasoning_text(row["demo"]["task"], row["demo"]["truth"])}
                fh.write(json.dumps(row) + "\n")
    return rows


def benchmark_corpus(data_root: str | Path) -> list[str]:
    """Distinct prompt texts and SFT targets of a benchmark on disk, sorted (the tiny tokenizer's corpus)."""
    from care.data.annotations import load_benchmark

    texts: set[str] = set()
    for result in load_benchmark(data_root, shuffle_options=False).values():
        for s in result.samples:
            texts.add(build_prompt_text(s.question, s.options))
            if s.cot:
                texts.add(f"<think>{s.cot}</think><answer>{s.answer}</answer>")
    return sorted(texts)


def demo_corpus(*, per_task: int = 64, seed: int = 0) -> list[str]:
    """Prompt, reasoning and answer texts of demo samples without rendering video (for the tiny tokenizer)."""
    rng = np.random.default_rng(seed)
    from care.data.demo_world import pick_colors

    texts = []
    for task in ("target", "lamp"):
        for _ in range(per_task):
            colors = pick_colors(rng, "shuffled" if rng.random() < 0.5 else "fixed")
            options = sorted(option_text(task, c) for c in colors)
            letter = LETTERS[int(rng.integers(4))]
            texts.append(build_prompt_text(QUESTIONS[task], options))
            texts.append(f"<think>{reasoning_text(task, colors[0])}</think><answer>{letter}</answer>")
    return texts
