"""The annotation loader: both row shapes, every reject reason with its exact message, seeded options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from care.data.annotations import AnnotationError, load_annotations, load_benchmark, split_from_filename
from care.data.schema import LETTERS


def train_row(sample_id="s1", **over):
    row = {
        "sample_id": sample_id,
        "question": "What should I do next to tidy the room?",
        "answer": "pick up the red marker",
        "negative_answers": ["pick up the blue marker", "pick up the green marker", "pick up the yellow marker",
                             "pick up the white marker"],
        "task_progress_metadata": [{"narration": "walk"}],
        "video_source": "demo_l1",
        "video_basename": f"{sample_id}.mp4",
        "current_observation_basename": f"{sample_id}.png",
    }
    row.update(over)
    return row


def val_row(sample_id="v1", **over):
    row = {
        "sample_id": sample_id,
        "question": "What next?",
        "choice_a": "open", "choice_b": "close", "choice_c": "push", "choice_d": "pull",
        "golden_choice_idx": "C",
        "answer": "push",
        "task_progress_metadata": [],
        "video_source": "demo_l2",
        "video_basename": "",
        "current_observation_basename": f"{sample_id}.png",
    }
    row.update(over)
    return row


def write(path: Path, rows) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_split_defaults_from_file_name(tmp_path):
    assert split_from_filename("training_6k.jsonl") == "train"
    assert split_from_filename("validation_L3.jsonl") == "L3"
    res = load_annotations(write(tmp_path / "validation_L1.jsonl", [val_row()]), tmp_path)
    assert res.samples[0].split == "L1"
    assert load_annotations(tmp_path / "validation_L1.jsonl", tmp_path, split="x").samples[0].split == "x"


def test_validation_row_parses_in_given_order(tmp_path):
    res = load_annotations(write(tmp_path / "validation_L2.jsonl", [val_row()]), tmp_path)
    assert res.rejects == []
    (s,) = res.samples
    assert s.options == ("open", "close", "push", "pull")
    assert s.answer == "C" and s.answer_text == "push"
    assert s.video is None  # image-only: empty task_progress_metadata
    assert s.image == "images/demo_l2/v1.png"
    assert (s.source_file, s.line) == (str(tmp_path / "validation_L2.jsonl"), 1)


def test_training_row_options_contain_gold_and_three_negatives(tmp_path):
    res = load_annotations(write(tmp_path / "training_6k.jsonl", [train_row()]), tmp_path)
    (s,) = res.samples
    assert s.video == "videos/demo_l1/s1.mp4"
    assert s.answer_text == "pick up the red marker"
    assert len(set(s.options)) == 4
    negatives = set(train_row()["negative_answers"])
    assert sum(o in negatives for o in s.options) == 3
    sources = s.meta["option_sources"]
    assert sources[s.answer_index] == "answer"
    for text, src in zip(s.options, sources, strict=True):
        if src != "answer":
            assert train_row()["negative_answers"][int(src[len("negative_answers["):-1])] == text


def test_option_shuffle_is_seeded_per_sample_and_independent_of_row_order(tmp_path):
    rows = [train_row(f"s{i}") for i in range(40)]
    a = load_annotations(write(tmp_path / "a.jsonl", rows), tmp_path, seed=3)
    b = load_annotations(write(tmp_path / "b.jsonl", rows[::-1]), tmp_path, seed=3)
    c = load_annotations(tmp_path / "a.jsonl", tmp_path, seed=4)
    by_id = {s.sample_id: s.options for s in b.samples}
    assert all(by_id[s.sample_id] == s.options for s in a.samples)
    assert [s.options for s in a.samples] != [s.options for s in c.samples]
    # the shuffle really moves the gold answer around
    assert {s.answer for s in a.samples} == set(LETTERS)


def test_unshuffled_options_are_sorted(tmp_path):
    rows = [train_row(f"s{i}", negative_answers=["pick up the blue marker", "pick up the green marker",
                                                  "pick up the yellow marker"]) for i in range(10)]
    res = load_annotations(write(tmp_path / "t.jsonl", rows), tmp_path, shuffle_options=False)
    for s in res.samples:
        assert list(s.options) == sorted(s.options)
        assert s.answer == "C"  # blue, green, red, yellow
        assert s.meta["shuffled"] is False


def test_cot_reasoning_is_read_and_tags_stripped(tmp_path):
    rows = [train_row("a", cot="<think>The agent walks to the red marker.</think><answer>C</answer>"),
            train_row("b", reasoning="The agent walks to the red marker."),
            train_row("c")]
    res = load_annotations(write(tmp_path / "training_with_cot_6k.jsonl", rows), tmp_path)
    assert [s.cot for s in res.samples] == ["The agent walks to the red marker."] * 2
    assert [str(r) for r in res.rejects] == [
        f"{tmp_path / 'training_with_cot_6k.jsonl'}:3: missing reasoning field (one of cot, reasoning, think, "
        "rationale, chain_of_thought) in a CoT row"]


def test_unknown_fields_are_kept_in_meta(tmp_path):
    res = load_annotations(write(tmp_path / "t.jsonl", [train_row(demo={"target": "red"})]), tmp_path)
    assert res.samples[0].meta["extra"] == {"demo": {"target": "red"}}


BAD_ROWS = [
    ("{not json", "malformed JSON: Expecting property name enclosed in double quotes at column 2"),
    ("[1, 2]", "row must be a JSON object, got list"),
    (train_row(question=None), "field 'question' must be a string, got null"),
    ({k: v for k, v in train_row().items() if k != "question"}, "missing field 'question'"),
    (train_row(question="  "), "field 'question' is empty"),
    ({k: v for k, v in train_row().items() if k != "sample_id"}, "missing field 'sample_id'"),
    (train_row(sample_id=True), "field 'sample_id' must be a string, got boolean"),
    ({k: v for k, v in train_row().items() if k != "task_progress_metadata"},
     "missing field 'task_progress_metadata' (use [] for an image-only sample)"),
    (train_row(task_progress_metadata="x"), "field 'task_progress_metadata' must be a list, got string"),
    (train_row(negative_answers="a"), "field 'negative_answers' must be a list of strings, got string"),
    (train_row(negative_answers=["a", 3, "c"]), "field 'negative_answers[1]' must be a non-empty string, got 3"),
    (train_row(negative_answers=["a", "b", "a", "pick up the red marker"]),
     "field 'negative_answers' has 2 distinct answers other than the gold answer; need at least 3"),
    ({k: v for k, v in train_row().items() if k != "negative_answers"}, "missing field 'negative_answers'"),
    (train_row(video_basename=""), "field 'video_basename' is empty"),
    (train_row(video_basename="../../etc/passwd"),
     "field 'video_basename' escapes the data root ('../../etc/passwd'); remove the '..'"),
    (train_row(video_source="/abs"),
     "field 'video_source' is an absolute path ('/abs'); use a path relative to images/<video_source>/"),
    (train_row(current_observation_basename="C:\\x.png"),
     "field 'current_observation_basename' is an absolute path ('C:\\\\x.png'); "
     "use a path relative to images/<video_source>/"),
    (val_row(golden_choice_idx="E"), "field 'golden_choice_idx' must be one of A, B, C, D, got 'E'"),
    (val_row(golden_choice_idx=2), "field 'golden_choice_idx' must be one of A, B, C, D, got 2"),
    ({k: v for k, v in val_row().items() if k != "golden_choice_idx"},
     "missing field 'golden_choice_idx' (a letter A-D)"),
    ({k: v for k, v in val_row().items() if k != "choice_d"}, "missing field 'choice_d'"),
    (val_row(answer="jump"), "answer 'jump' is not among the options choice_a..choice_d"),
    (val_row(answer="open"), "answer 'open' is choice_a but golden_choice_idx is 'C'"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_each_bad_row_is_rejected_with_its_exact_reason_and_good_rows_flow(tmp_path, row, reason):
    path = write(tmp_path / "rows.jsonl", [train_row("good1"), row, train_row("good2")])
    res = load_annotations(path, tmp_path)
    assert [s.sample_id for s in res.samples] == ["good1", "good2"]
    assert [str(r) for r in res.rejects] == [f"{path}:2: {reason}"]
    with pytest.raises(AnnotationError) as err:
        load_annotations(path, tmp_path, strict=True)
    assert str(err.value) == f"{path}:2: {reason}"


def test_duplicate_sample_id_and_invalid_utf8(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join([json.dumps(train_row("a")).encode(), b"",
                                 json.dumps(train_row("a")).encode(), b'{"q": "\xff"}']) + b"\n")
    res = load_annotations(path, tmp_path)
    assert [s.line for s in res.samples] == [1]
    assert [str(r) for r in res.rejects] == [
        f"{path}:3: duplicate sample_id 'a' (first seen on line 1); sample ids must be unique in a file",
        f"{path}:4: not valid UTF-8 at byte offset 7; re-save the file as UTF-8",
    ]


def test_symlinked_source_folder_outside_root_is_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (root / "images" / "linked").symlink_to(outside)
    row = val_row(video_source="linked")
    res = load_annotations(write(tmp_path / "v.jsonl", [row]), root)
    assert len(res.rejects) == 1
    assert "resolves outside the data root" in res.rejects[0].reason


def test_missing_file_and_benchmark_loading(tmp_path):
    with pytest.raises(AnnotationError, match="annotation file not found"):
        load_annotations(tmp_path / "nope.jsonl", tmp_path)
    with pytest.raises(AnnotationError, match="no annotation file found"):
        load_benchmark(tmp_path)
    (tmp_path / "annotations").mkdir()
    write(tmp_path / "annotations" / "training_6k.jsonl", [train_row()])
    write(tmp_path / "annotations" / "validation_L3.jsonl", [val_row()])
    loaded = load_benchmark(tmp_path)
    assert list(loaded) == ["train", "L3"]
    assert loaded["L3"].samples[0].split == "L3"
