"""MVBench (OpenGVLab/MVBench on Hugging Face): 20 temporal tasks, one JSON file per task.

Layout under the root, as published::

    json/<task>.json            a list of {"video", "question", "candidates", "answer"} (+ "start", "end")
    video/<task source>/<video> the task's videos (e.g. video/star/Charades_v1_480/ for action_sequence)

The task -> (annotation file, video folder, media kind) table is the benchmark's own (its evaluation notebook).
A row's ``answer`` is the gold option text, one of its ``candidates``; options keep the candidates' order.
Level = the task (the JSON file's stem, e.g. ``action_sequence``). The reference general-video evaluation samples
the whole file at 2 fps, at most 32 frames; a row's ``start``/``end`` bounds are kept in ``meta`` and not applied
(as there). ``episodic_reasoning`` (a folder of frames per row) is not supported: its rows are rejects
``not supported: ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

from care.data.annotations import LoadResult, RowError, json_kind, text_field
from care.data.benchmarks.common import (
    LETTERS,
    Benchmark,
    Collector,
    check_options,
    media_path,
)
from care.data.schema import Sample

TASKS: dict[str, tuple[str, str]] = {  # level -> (video folder under video/, media kind)
    "action_sequence": ("star/Charades_v1_480", "video"),
    "action_prediction": ("star/Charades_v1_480", "video"),
    "action_antonym": ("ssv2_video", "video"),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", "video"),
    "unexpected_action": ("FunQA_test/test", "video"),
    "object_existence": ("clevrer/video_validation", "video"),
    "object_interaction": ("star/Charades_v1_480", "video"),
    "object_shuffle": ("perception/videos", "video"),
    "moving_direction": ("clevrer/video_validation", "video"),
    "action_localization": ("sta/sta_video", "video"),
    "scene_transition": ("scene_qa/video", "video"),
    "action_count": ("perception/videos", "video"),
    "moving_count": ("clevrer/video_validation", "video"),
    "moving_attribute": ("clevrer/video_validation", "video"),
    "state_change": ("perception/videos", "video"),
    "fine_grained_pose": ("nturgbd", "video"),
    "character_order": ("perception/videos", "video"),
    "egocentric_navigation": ("vlnqa", "video"),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", "frame"),
    "counterfactual_inference": ("clevrer/video_validation", "video"),
}


def annotation_files(root: Path) -> list[Path]:
    return [root / "json" / f"{task}.json" for task in TASKS if (root / "json" / f"{task}.json").is_file()]


def read(root: Path) -> LoadResult:
    out = Collector()
    for path in annotation_files(root):
        task = path.stem
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            out.reject(path, 0, f"not a readable JSON file ({exc}); re-download it")
            continue
        if not isinstance(rows, list):
            out.reject(path, 0, f"must hold a JSON list of rows, got {json_kind(rows)}")
            continue
        for i, row in enumerate(rows, start=1):
            out.add(path, i, lambda path=path, task=task, row=row, i=i: _sample(root, path, task, i, row))
    return out.result


def _sample(root: Path, path: Path, task: str, row_no: int, row) -> Sample:
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {json_kind(row)}")
    folder, media = TASKS[task]
    if media != "video":
        raise RowError(f"not supported: task {task} gives each row a folder of frames, not a video file")
    question = text_field(row, "question")
    options = check_options(row.get("candidates"), "candidates") if "candidates" in row else None
    if options is None:
        raise RowError("missing field 'candidates'")
    answer = text_field(row, "answer")
    if options.count(answer) != 1:
        raise RowError(f"answer {answer!r} must be exactly one of the candidates {list(options)}")
    video = media_path(root, f"video/{folder}/{text_field(row, 'video')}", "video")
    bounds = {k: row[k] for k in ("start", "end") if k in row}
    return Sample(sample_id=f"{task}-{row_no:05d}", question=question, options=options,
                  answer=LETTERS[options.index(answer)], video=video, image=None, split=task,
                  source_file=str(path), line=row_no, meta={"benchmark": "mvbench", "bounds": bounds})


BENCHMARK = Benchmark(
    name="mvbench", title="MVBench", download="https://huggingface.co/datasets/OpenGVLab/MVBench",
    layout="json/<task>.json and video/<source>/<file> (the Hugging Face repository as cloned)",
    annotation_files=annotation_files, read=read)
