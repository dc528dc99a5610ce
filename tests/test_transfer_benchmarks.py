"""Transfer benchmarks: each adapter on a small generated dataset in its published layout (real encoded videos,
bad rows included), the prompt text and answer rule, video-only samples through the frame cache and prompt items,
the CLI's errors, and one ``care eval --benchmark`` run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from care.algo.prompt import build_messages, prompt_template
from care.data.benchmarks import BENCHMARKS, BenchmarkError, get_benchmark, load_levels
from care.eval.scoring import eval_prediction, is_correct
from care.eval_schema import EvalConfig
from care.media.frame_cache import FrameCache
from care.media.preprocess import sample_media
from care.media.sampling import FrameSampling
from care.media.synth import write_video
from care.models.samples import prompt_item
from tests.cli_helpers import care_in_process

# the reference general-video evaluation's multiple-choice prompt (eval_bench.py), spelled out independently
REFERENCE_INSTRUCTION = (
    "Please think about this question as if you were a human pondering deeply. Engage in an internal dialogue "
    "using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other "
    "natural language thought expressions It's encouraged to include self-reflection or verification in the "
    "reasoning process. Provide your detailed reasoning between the <think> and </think> tags, and then give your "
    "final answer between the <answer> and </answer> tags. Please provide only the single option letter (e.g., A, "
    "B, C, D, etc.) within the <answer> </answer> tags.")


def _video(path: Path, n_frames: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, n_frames=n_frames, height=32, width=32, fps=8)


def make_mvbench(root: Path) -> Path:
    """json/<task>.json + video/<task folder>/<file>: 3 good rows in 2 tasks, 4 bad rows, a broken file,
    a frame-folder task."""
    (root / "json").mkdir(parents=True)
    _video(root / "video/star/Charades_v1_480/A1.mp4")
    _video(root / "video/star/Charades_v1_480/A2.mp4", n_frames=12)
    _video(root / "video/perception/videos/s1.mp4")
    sequence = [
        {"video": "A1.mp4", "question": "What did the person do first?", "candidates": ["Sat down.", "Stood up.",
         "Opened the door."], "answer": "Stood up.", "start": 1.5, "end": 9.0},
        {"video": "A2.mp4", "question": "What happened next?", "candidates": ["Left.", "Ate.", "Slept.", "Read.",
         "Ran."], "answer": "Ran."},
        {"video": "A1.mp4", "question": "Bad answer?", "candidates": ["x", "y"], "answer": "z"},   # row 3
        {"video": "A1.mp4", "candidates": ["x", "y"], "answer": "x"},                            # row 4
        {"video": "../../escape.mp4", "question": "Where?", "candidates": ["x", "y"], "answer": "x"},  # row 5
        {"video": "A1.mp4", "question": "One option?", "candidates": ["x"], "answer": "x"},       # row 6
    ]
    (root / "json/action_sequence.json").write_text(json.dumps(sequence))
    (root / "json/object_shuffle.json").write_text(json.dumps([
        {"video": "s1.mp4", "question": "Where is the ball?", "candidates": ["left", "middle", "right"],
         "answer": "left"}]))
    (root / "json/episodic_reasoning.json").write_text(json.dumps([
        {"video": "clip_1", "question": "Why?", "candidates": ["a", "b"], "answer": "a", "start": 0, "end": 3}]))
    (root / "json/moving_count.json").write_text("[{not json")
    return root


def make_videomme(root: Path) -> Path:
    """videomme/test-00000-of-00001.parquet + data/<videoID>.mp4: 3 good rows (one per duration), 3 bad rows."""
    (root / "videomme").mkdir(parents=True)
    for vid in ("fFjv93ACGo8", "kTj5kIbnVmc", "q0hyIPjbvvs"):
        _video(root / "data" / f"{vid}.mp4")

    def row(qid, duration, vid, options, answer, domain="Knowledge"):
        return {"video_id": qid[:3], "duration": duration, "domain": domain, "sub_category": "Humanity & History",
                "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": qid,
                "task_type": "Counting Problem", "question": f"Question {qid}?", "options": options,
                "answer": answer}

    lettered = ["A. Apples.", "B. Blue.", "C. Three.", "D. None of the above."]
    rows = [row("001-1", "short", "fFjv93ACGo8", lettered, "C"),
            row("301-1", "medium", "kTj5kIbnVmc", lettered, "A", domain="Sports Competition"),
            row("601-1", "long", "q0hyIPjbvvs", lettered, "D"),
            row("001-2", "tiny", "fFjv93ACGo8", lettered, "B"),                                   # row 4
            row("001-3", "short", "fFjv93ACGo8", ["Apples.", "B. Blue.", "C. x", "D. y"], "B"),   # row 5
            row("001-1", "short", "fFjv93ACGo8", lettered, "E")]                                  # row 6
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme/test-00000-of-00001.parquet")
    return root


def make_vsibench(root: Path) -> Path:
    """test-00000-of-00001.parquet + <dataset>/<scene_name>.mp4: 2 multiple-choice rows (one with a text
    ground truth), a numerical row, 2 bad rows."""
    root.mkdir(parents=True)
    _video(root / "arkitscenes/41069025.mp4")
    _video(root / "scannet/scene0011_00.mp4")

    def row(i, qtype, dataset, scene, options, truth):
        return {"id": i, "dataset": dataset, "scene_name": scene, "question_type": qtype,
                "question": f"Question {i}?", "options": options, "ground_truth": truth}

    lettered = ["A. sofa", "B. table", "C. lamp", "D. bed"]
    rows = [row(1, "object_rel_distance", "arkitscenes", "41069025", lettered, "B"),
            row(2, "route_planning", "scannet", "scene0011_00", lettered, "lamp"),
            row(3, "object_counting", "scannet", "scene0011_00", None, "4"),                 # row 3
            row(4, "object_rel_distance", "arkitscenes", "41069025", lettered, "chair"),     # row 4
            row(5, "route_planning", "scannet", "scene0011_00", ["A. left", "C. right"], "A")]  # row 5
    pq.write_table(pa.Table.from_pylist(rows), root / "test-00000-of-00001.parquet")
    return root


def make_mmvu(root: Path) -> Path:
    """validation.json + videos/<Subject>/<n>.mp4: 2 multiple-choice rows (5 and 4 options), an open-ended row,
    2 bad rows."""
    root.mkdir(parents=True)
    _video(root / "videos/Chemistry/0.mp4")
    _video(root / "videos/Computer_Science/1.mp4")
    url = "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/{}.mp4"

    def row(i, qtype, video, subject, choices, answer):
        return {"id": f"validation_{i}", "video": url.format(video), "youtube_url": "https://www.youtube.com/x",
                "question_type": qtype, "metadata": {"subject": subject, "textbook": "T", "knowledge": [],
                                                     "rationale": "R"},
                "question": f"Question {i}?", "choices": choices, "answer": answer}

    five = {"A": "10.0", "B": "5.0", "C": "12.0", "D": "15.0", "E": "20.0"}
    empty = dict.fromkeys("ABCDE", "")
    rows = [row(1, "multiple-choice", "Chemistry/0", "Chemistry", five, "A"),
            row(2, "multiple-choice", "Computer_Science/1", "Computer Science", {**five, "E": ""}, "D"),
            row(3, "open-ended", "Computer_Science/1", "Computer Science", empty, "Binary Search"),  # row 3
            row(4, "multiple-choice", "Chemistry/0", "Chemistry", five, "F"),                        # row 4
            row(5, "multiple-choice", "Chemistry/0", "Chemistry", {**five, "B": ""}, "A")]           # row 5
    (root / "validation.json").write_text(json.dumps(rows))
    return root


def make_tempcompass(root: Path) -> Path:
    """multi-choice/test-00000-of-00001.parquet + videos/<video_id>.mp4: 3 good rows (two aspects, one with five
    options), 4 bad rows; a yes/no file beside it that is not read."""
    (root / "multi-choice").mkdir(parents=True)
    (root / "yes_no").mkdir()
    for vid in ("1006953455", "1011736526"):
        _video(root / "videos" / f"{vid}.mp4")

    def row(vid, question, answer, dim="direction"):
        return {"video_id": vid, "question": question, "answer": answer, "dim": dim}

    rows = [row("1006953455", "In which direction is the car moving?\nA. left\nB. right\nC. towards the camera\n"
                "D. away from the camera", "B. right"),
            row("1006953455", "How fast is the car moving?\nA. slowly\nB. fast", "A. slowly", dim="speed"),
            row("1011736526", "What happens first?\nA. a\nB. b\nC. c\nD. d\nE. e", "E. e", dim="order"),
            row("1011736526", "In which direction?\nA. up\nC. down", "A. up"),                       # row 4
            row("1011736526", "In which direction?\nA. up\nB. down", "B. sideways"),                 # row 5
            row("1011736526", "In which direction?\nA. up\nB. down", "C"),                           # row 6
            row("1011736526", "Only a question?", "A. up")]                                           # row 7
    pq.write_table(pa.Table.from_pylist(rows), root / "multi-choice/test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([row("1006953455", "Is the car moving left?", "no")]),
                   root / "yes_no/test-00000-of-00001.parquet")
    return root


def make_videommmu(root: Path) -> Path:
    """Perception/ and Adaptation/ test parquet + <Discipline>/<id>.mp4: 3 good rows (one video in two tracks,
    lettered and plain options), 4 bad rows."""
    for track in ("Perception", "Adaptation"):
        (root / track).mkdir(parents=True)
    _video(root / "Engineering" / "validation_Computer_Science_1.mp4")
    _video(root / "Art" / "validation_Art_Theory_2.mp4")

    def row(sid, options, answer, question_type="multiple-choice"):
        return {"id": sid, "question": f"Question on {sid}?", "options": options, "answer": answer,
                "question_type": question_type}

    perception = [row("validation_Computer_Science_1", ["A. stack", "B. queue", "C. heap", ""], "B", "perception"),
                  row("validation_Art_Theory_2", ["red", "blue"], "A"),
                  row("validation_Astrology_3", ["a", "b"], "A"),                              # row 3
                  row("validation_Art_Theory_2", ["red", "blue"], "C")]                        # row 4
    adaptation = [row("validation_Computer_Science_1", ["O(n)", "O(log n)", "O(1)"], "C"),
                  row("validation_Art_Theory_2", [], "12", "open"),                            # row 2
                  row("Art_Theory", ["red", "blue"], "A")]                                     # row 3
    pq.write_table(pa.Table.from_pylist(perception), root / "Perception/test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(adaptation), root / "Adaptation/test-00000-of-00001.parquet")
    return root


def _reasons(loaded) -> dict[tuple[str, int], str]:
    return {(Path(r.file).name, r.line): r.reason for r in loaded.rejects}


def test_mvbench_reads_its_published_layout_keeping_the_good_rows(tmp_path):
    root = make_mvbench(tmp_path / "mvbench")
    loaded = load_levels("mvbench", root)
    by_id = {s.sample_id: s for s in loaded.samples}
    assert list(by_id) == ["action_sequence-00001", "action_sequence-00002", "object_shuffle-00001"]
    first = by_id["action_sequence-00001"]
    assert (first.options, first.answer, first.video, first.image, first.split) == (
        ("Sat down.", "Stood up.", "Opened the door."), "B", "video/star/Charades_v1_480/A1.mp4", None,
        "action_sequence")
    assert first.meta["bounds"] == {"start": 1.5, "end": 9.0}
    assert by_id["action_sequence-00002"].answer == "E" and by_id["object_shuffle-00001"].split == "object_shuffle"
    reasons = _reasons(loaded)
    assert "answer 'z' must be exactly one of the candidates" in reasons[("action_sequence.json", 3)]
    assert reasons[("action_sequence.json", 4)] == "missing field 'question'"
    assert "must be a path inside the data root" in reasons[("action_sequence.json", 5)]
    assert "list of 2 to 10 options, got 1 options" in reasons[("action_sequence.json", 6)]
    assert reasons[("episodic_reasoning.json", 1)].startswith("not supported: task episodic_reasoning")
    assert "not a readable JSON file" in reasons[("moving_count.json", 0)]
    assert len(loaded.rejects) == 6
    assert [s.sample_id for s in load_levels("mvbench", root, ["object_shuffle"]).samples] == ["object_shuffle-00001"]


def test_videomme_reads_its_parquet_and_levels_by_duration(tmp_path):
    root = make_videomme(tmp_path / "videomme")
    loaded = load_levels("videomme", root)
    assert [(s.sample_id, s.split, s.answer) for s in loaded.samples] == [
        ("001-1", "short", "C"), ("301-1", "medium", "A"), ("601-1", "long", "D")]
    medium = loaded.samples[1]
    assert medium.options == ("Apples.", "Blue.", "Three.", "None of the above.")
    assert (medium.video, medium.image, medium.meta["domain"]) == ("data/kTj5kIbnVmc.mp4", None,
                                                                  "Sports Competition")
    reasons = _reasons(loaded)
    parquet = "test-00000-of-00001.parquet"
    assert reasons[(parquet, 4)] == "field 'duration' must be one of short, medium, long, got 'tiny'"
    assert reasons[(parquet, 5)] == "field 'options[0]' must start with 'A. ', got 'Apples.'"
    assert "field 'answer' must be one of A, B, C, D, got 'E'" in reasons[(parquet, 6)]
    assert len(loaded.rejects) == 3


def test_vsibench_keeps_the_multiple_choice_questions_levelled_by_type(tmp_path):
    root = make_vsibench(tmp_path / "vsibench")
    loaded = load_levels("vsibench", root)
    assert [(s.sample_id, s.split, s.answer, s.video) for s in loaded.samples] == [
        ("vsibench-1", "object_rel_distance", "B", "arkitscenes/41069025.mp4"),
        ("vsibench-2", "route_planning", "C", "scannet/scene0011_00.mp4")]
    assert loaded.samples[0].options == ("sofa", "table", "lamp", "bed") and loaded.samples[0].image is None
    reasons = _reasons(loaded)
    parquet = "test-00000-of-00001.parquet"
    assert reasons[(parquet, 3)].startswith("not supported: numerical question (object_counting)")
    assert "an option letter or one option's text, got 'chair'" in reasons[(parquet, 4)]
    assert reasons[(parquet, 5)] == "field 'options[1]' must start with 'B. ', got 'C. right'"
    assert len(loaded.rejects) == 3


def test_mmvu_keeps_the_multiple_choice_questions_levelled_by_subject(tmp_path):
    root = make_mmvu(tmp_path / "mmvu")
    loaded = load_levels("mmvu", root)
    assert [(s.sample_id, s.split, s.answer, s.video, len(s.options)) for s in loaded.samples] == [
        ("validation_1", "Chemistry", "A", "videos/Chemistry/0.mp4", 5),
        ("validation_2", "Computer_Science", "D", "videos/Computer_Science/1.mp4", 4)]
    reasons = _reasons(loaded)
    assert reasons[("validation.json", 3)].startswith("not supported: open-ended question")
    assert reasons[("validation.json", 4)] == "field 'answer' must be one of A, B, C, D, E, got 'F'"
    assert reasons[("validation.json", 5)] == "field 'choices[1]' must be a non-empty string, got ''"
    assert len(loaded.rejects) == 3


def test_tempcompass_splits_the_question_into_options_and_levels_by_aspect(tmp_path):
    root = make_tempcompass(tmp_path / "tempcompass")
    loaded = load_levels("tempcompass", root)
    assert [(s.sample_id, s.split, s.answer, s.video) for s in loaded.samples] == [
        ("direction/1006953455/1", "direction", "B", "videos/1006953455.mp4"),
        ("speed/1006953455/2", "speed", "A", "videos/1006953455.mp4"),
        ("order/1011736526/3", "order", "E", "videos/1011736526.mp4")]
    first = loaded.samples[0]
    assert first.question == "In which direction is the car moving?" and first.image is None
    assert first.options == ("left", "right", "towards the camera", "away from the camera")
    reasons = _reasons(loaded)
    parquet = "test-00000-of-00001.parquet"
    assert reasons[(parquet, 4)] == "field 'question': option line 2 must start with 'B. ', got 'C. down'"
    assert reasons[(parquet, 5)] == "field 'answer' 'B. sideways' does not match option B 'down' of the question"
    assert reasons[(parquet, 6)] == "field 'answer' must be a lettered option ('A. ...' to 'B. ...'), got 'C'"
    assert "list of 2 to 10 options, got 0 options" in reasons[(parquet, 7)]
    assert len(loaded.rejects) == 4  # the yes/no part is not read
    assert [s.split for s in load_levels("tempcompass", root, ["speed"]).samples] == ["speed"]


def test_videommmu_keeps_the_multiple_choice_questions_levelled_by_track(tmp_path):
    root = make_videommmu(tmp_path / "videommmu")
    loaded = load_levels("videommmu", root)
    assert [(s.sample_id, s.split, s.answer, s.video) for s in loaded.samples] == [
        ("Perception/validation_Computer_Science_1", "Perception", "B", "Engineering/validation_Computer_Science_1.mp4"),
        ("Perception/validation_Art_Theory_2", "Perception", "A", "Art/validation_Art_Theory_2.mp4"),
        ("Adaptation/validation_Computer_Science_1", "Adaptation", "C", "Engineering/validation_Computer_Science_1.mp4")]
    assert loaded.samples[0].options == ("stack", "queue", "heap")  # prefixes and the trailing empty option dropped
    assert loaded.samples[2].options == ("O(n)", "O(log n)", "O(1)")
    reasons = {(Path(r.file).parent.name, r.line): r.reason for r in loaded.rejects}
    assert "subject 'Astrology' is not one of MMMU's 30 subjects" in reasons[("Perception", 3)]
    assert reasons[("Perception", 4)] == "field 'answer' must be one of A, B, got 'C'"
    assert reasons[("Adaptation", 2)].startswith("not supported: open question")
    assert reasons[("Adaptation", 3)] == "field 'id' must be <split>_<Subject>_<n>, got 'Art_Theory'"
    assert len(loaded.rejects) == 4
    assert [s.split for s in load_levels("videommmu", root, ["Adaptation"]).samples] == ["Adaptation"]


def test_every_benchmark_has_its_evaluation_template():
    from care.algo.prompt import TRANSFER_BENCHMARKS

    assert set(BENCHMARKS) == set(TRANSFER_BENCHMARKS)


def test_missing_root_or_unknown_name_says_what_to_do(tmp_path):
    with pytest.raises(BenchmarkError, match="known: mvbench, videomme, mmvu, vsibench, tempcompass, videommmu"):
        get_benchmark("mvbnech")
    with pytest.raises(BenchmarkError, match=r"data root not found; download it from https://huggingface.co/"
                                             r"datasets/OpenGVLab/MVBench"):
        load_levels("mvbench", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError, match="no Video-MME annotation file found; expected videomme/test-"):
        load_levels("videomme", tmp_path / "empty")


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_prompt_is_the_reference_general_video_evaluation_text(name):
    template = prompt_template(name, "eval")
    assert template.template_id == f"{name}@b0628fc-general-eval"
    # eval_bench.py: problem + "Options:\n" + each lettered option + "\n", then "{Question}\n" + instruction
    question = "What happens after the door opens?" + "Options:\n" + "A. Sat.\n" + "B. Ran.\n" + "C. Left.\n"
    expected = question + "\n" + REFERENCE_INSTRUCTION
    messages = build_messages("What happens after the door opens?", ["Sat.", "Ran.", "Left."], has_video=True,
                              has_image=False, template=template)
    assert [c["type"] for c in messages[0]["content"]] == ["video", "text"]
    assert messages[0]["content"][1]["text"] == expected


def test_answer_rule_is_the_first_answer_tag_exact_letter():
    assert eval_prediction("<think>five people</think><answer> E </answer>") == "E"
    assert is_correct("<think>x</think><answer>E</answer><answer>A</answer>", "E")
    assert not is_correct("<answer>(E)</answer>", "E") and not is_correct("<answer>E. Ran.</answer>", "E")
    assert is_correct("E", "E") and not is_correct("The answer is E", "E")  # no tag: the whole output


def test_video_only_samples_through_the_cache_and_prompt_items(tmp_path):
    root = make_mvbench(tmp_path / "mvbench")
    sample = load_levels("mvbench", root, ["object_shuffle"]).samples[0]
    assert sample_media(sample, root) == [(str((root / sample.video).resolve()), "video")]
    cache = FrameCache(tmp_path / "cache", FrameSampling(fps=2.0, min_frames=4, max_frames=32), root)
    assert not cache.contains(sample)
    assert cache.put(root / sample.video, "video").status == "ok"
    assert cache.contains(sample)
    media = cache.load(sample)
    assert media.image is None and media.frames.shape[0] == 4  # 1 s at 8 fps: 2 fps gives 2, min_frames 4
    item = prompt_item(sample, media, template=prompt_template("mvbench", "eval"))
    assert item.image is None and [c["type"] for c in item.messages[0]["content"]] == ["video", "text"]


def test_eval_config_takes_the_benchmark_protocol():
    config = EvalConfig(checkpoint="m", data_root="d", benchmark="videomme")
    assert config.levels == [] and config.frame_count == "fps" and config.prompt_name() == "videomme"
    assert (config.frames.fps, config.frames.min_frames, config.frames.max_frames, config.frames.nframes) == (
        2.0, 4, 32, None)
    assert config.annotation_file("short") == "short"
    assert EvalConfig(checkpoint="m", data_root="d").levels == ["L1", "L2", "L3"]  # unchanged without one
    with pytest.raises(ValueError, match="unknown benchmark 'nope'; known: mvbench, videomme, mmvu, vsibench, tempcompass, videommmu"):
        EvalConfig(checkpoint="m", data_root="d", benchmark="nope")


def test_care_eval_benchmark_errors_are_one_line(tmp_path, capsys):
    code, _, err = care_in_process(capsys, "eval", "m", "--benchmark", "nope", "--data-root", str(tmp_path))
    assert code != 0 and "unknown benchmark 'nope'; known: mvbench, videomme, mmvu, vsibench, tempcompass, videommmu" in err and "Traceback" not in err
    code, _, err = care_in_process(capsys, "eval", "m", "--benchmark", "videomme", "--data-root",
                                   str(tmp_path / "absent"))
    assert code != 0 and "Traceback" not in err
    assert "download it from https://huggingface.co/datasets/lmms-lab/Video-MME" in err and "data/<videoID>.mp4" in err


@pytest.mark.slow
def test_care_eval_benchmark_end_to_end(prefect_harness, care_home, tmp_path, tiny_model_dir, capsys,
                                        monkeypatch):
    from care.store import catalog
    from care.workspace import Workspace

    monkeypatch.setenv("CARE_PREFECT_SERVER", "harness")  # the session's test server, not a private one
    root = make_mvbench(tmp_path / "mvbench")
    code, out, err = care_in_process(capsys, "--json", "eval", str(tiny_model_dir), "--benchmark", "mvbench",
                                     "--data-root", str(root), "--label", "transfer",
                                     "--set", "decoding.max_new_tokens=8")
    assert code == 0, err
    result = json.loads(out)
    assert [m["level"] for m in result["levels"]] == ["action_sequence", "object_shuffle"]
    assert [m["rejected_rows"] for m in result["levels"]] == [6, 6]
    db = Workspace.at(care_home).catalog_path
    rows = catalog.query("select level, n, prompt_template from eval_results where run_id = ? and label = ? "
                         "and judge = 'accuracy' order by level", [result["run_id"], "transfer"], path=db)
    assert rows == [("action_sequence", 2, "mvbench@b0628fc-general-eval"), ("all", 3, "mvbench@b0628fc-general-eval"),
                    ("object_shuffle", 1, "mvbench@b0628fc-general-eval")]
    predictions = pq.read_table(result["levels"][0]["path"]).to_pylist()
    assert [(p["sample_id"], p["gold"], p["options"]) for p in predictions] == [
        ("action_sequence-00001", "B", ["Sat down.", "Stood up.", "Opened the door."]),
        ("action_sequence-00002", "E", ["Left.", "Ate.", "Slept.", "Read.", "Ran."])]
    assert {p["correct"] for p in predictions} <= {True, False}
    rejects = catalog.query("select count(*) from rejects where reason like 'not supported:%'", path=db)
    assert rejects[0][0] >= 1
