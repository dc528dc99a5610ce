"""The evaluation stage: scoring path on hand-made completions, answer likelihoods on the tiny model, the level
task writing Parquet and catalog rows (upserts), and one real flow run whose re-run is all cache hits."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from care.data.annotations import load_annotations
from care.eval.evaluate import (
    Generated,
    answer_likelihoods,
    overall_record,
    predictions_schema,
    results_rows,
    score_level,
)
from care.eval.judge_config import make_judge
from care.eval.judges import RuleJudge
from care.eval_schema import EvalConfig, JudgeConfig
from care.identity import content_id, model_path, owning_run
from care.media.sampling import FrameSampling
from care.models.loading import load_model, load_processor
from care.models.samples import prompt_items
from care.store import catalog, evals
from care.train.checkpoint import make_initial_checkpoint
from care.workspace import Workspace
from tests.rl_helpers import cache_demo

FRAMES = FrameSampling(nframes=4)
LEVEL_FILES = ("validation_L1.jsonl", "validation_L2.jsonl")


def _l1_samples(demo_root, n):
    return load_annotations(demo_root / "annotations" / "validation_L1.jsonl", demo_root,
                            shuffle_options=False).samples[:n]


def _answer(sample, letter: str, think: str | None = None) -> str:
    colour = sample.options["ABCD".index(letter)].split()[-2]
    think = f"The agent walks to the {colour} marker." if think is None else think
    return f"<think>{think}</think><answer>{letter}</answer>"


def test_hand_made_completions_score_as_the_protocol_says(demo_root):
    samples = _l1_samples(demo_root, 6)
    wrong = [next(x for x in "ABCD" if x != s.answer) for s in samples]
    completions = [
        _answer(samples[0], samples[0].answer),                                   # right, consistent
        _answer(samples[1], wrong[1]),                                            # wrong, consistent
        f"<answer>{samples[2].answer}.</answer>",                                 # "C." is wrong; no think
        f"  {samples[3].answer}  ",                                               # no tag: whole output, right
        _answer(samples[4], samples[4].answer, think=f"The agent walks to the "
                f"{samples[4].options['ABCD'.index(wrong[4])].split()[-2]} marker."),  # right, inconsistent
        f"<answer>{samples[5].answer}</answer><answer>{wrong[5]}</answer>",       # first tag counts: right
    ]
    generated = [Generated(c, 10, False, likelihood=lk) for c, lk in zip(completions, [0.9, 0.2, None, None, 0.7,
                                                                                       math.nan], strict=True)]
    judges = [RuleJudge(), make_judge(JudgeConfig(name="reference_likelihood", reference="policy"))]
    rows, accuracy, consistency = score_level(level="L1", samples=samples, generated=generated, judges=judges,
                                              context={"run_id": "r"})
    assert [r["correct"] for r in rows] == [True, False, False, True, True, True]
    assert [r["prediction"] for r in rows][2:4] == [f"{samples[2].answer}.", samples[3].answer]
    assert (accuracy["n"], accuracy["correct"], accuracy["accuracy"]) == (6, 4, pytest.approx(4 / 6))
    assert 0 < accuracy["ci_low"] < 4 / 6 < accuracy["ci_high"] < 1
    rule, likelihood = consistency
    assert rule["judge_label"] == "rule@v1" and (rule["n_judged"], rule["n_consistent"]) == (3, 2)
    assert [r["rule_consistent"] for r in rows] == [True, True, None, None, False, None]
    assert likelihood["judge_label"] == "reference_likelihood@v1[reference=policy,threshold=0.5]"
    assert [r["reference_likelihood_consistent"] for r in rows] == [True, False, None, None, True, None]
    assert likelihood["unjudged_reasons"] == {"no_likelihood": 3}
    assert rows[5]["likelihood"] is None  # NaN is stored as null
    schema_names = set(predictions_schema(["rule", "reference_likelihood"]).names)
    assert {"rule_consistent", "rule_code", "rule_reason", "reference_likelihood_reason"} <= schema_names


def test_overall_pools_counts_and_catalog_rows_upsert(care_home):
    level = {"run_id": "r", "label": "after-rl", "checkpoint": "/c", "checkpoint_id": "abc", "path": "/p"}
    one = {**level, "level": "L1", "accuracy": {"level": "L1", "n": 4, "correct": 3, "accuracy": 0.75, "ci_low": 0.3,
                                                  "ci_high": 0.95, "confidence": 0.95},
           "consistency": [{"judge": "rule", "judge_version": "v1", "judge_label": "rule@v1", "level": "L1", "n": 4,
                            "n_judged": 3, "n_unjudged": 1, "n_consistent": 3, "rate": 1.0, "ci_low": 0.4,
                            "ci_high": 1.0, "unjudged_reasons": {"no_think": 1}}]}
    two = {**one, "level": "L2", "accuracy": {**one["accuracy"], "level": "L2", "n": 6, "correct": 1},
           "consistency": [{**one["consistency"][0], "level": "L2", "n": 6, "n_judged": 4, "n_unjudged": 2,
                            "n_consistent": 1, "unjudged_reasons": {"no_think": 1, "no_answer": 1}}]}
    pooled = overall_record([one, two])
    assert (pooled["accuracy"]["n"], pooled["accuracy"]["correct"], pooled["accuracy"]["accuracy"]) == (10, 4, 0.4)
    [rule] = pooled["consistency"]
    assert (rule["n_judged"], rule["n_consistent"], rule["rate"]) == (7, 4, pytest.approx(4 / 7))
    assert rule["unjudged_reasons"] == {"no_answer": 1, "no_think": 2}
    table = results_rows([one, two, pooled])
    assert [r["level"] for r in table] == ["L1", "L2", "all"] and table[2]["consistency[rule@v1]"]["n_judged"] == 7

    db = Workspace.at(care_home).catalog_path
    for _ in range(2):  # a re-run replaces, never duplicates
        for rec in (one, two, pooled):
            evals.record_eval_results(evals.result_rows(run_id="r", checkpoint_id="abc", label="after-rl",
                                                        checkpoint="/c", accuracy=rec["accuracy"],
                                                        consistency=rec["consistency"]), path=db)
    got = catalog.query("select level, judge, n, correct, consistency_rate, n_judged, unjudged_reasons "
                        "from eval_results order by level, judge", path=db)
    assert [(g[0], g[1]) for g in got] == [("L1", "accuracy"), ("L1", "rule@v1"), ("L2", "accuracy"),
                                           ("L2", "rule@v1"), ("all", "accuracy"), ("all", "rule@v1")]
    assert got[4][2:4] == (10, 4) and got[5][4] == pytest.approx(4 / 7) and got[0][4] is None


def test_answer_likelihood_under_the_tiny_model(tmp_path, demo_root, tiny_model_dir):
    data = cache_demo(tmp_path, demo_root, files=("validation_L1.jsonl",))
    samples = _l1_samples(demo_root, 2)
    model, processor = load_model(tiny_model_dir), load_processor(tiny_model_dir)
    tok = processor.tokenizer
    texts = [_answer(samples[0], samples[0].answer), "<think>no answer here</think>"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    items, rates = prompt_items(samples, data.cache())
    p, logp = answer_likelihoods(model, processor, items, rates, ids)
    assert 0 < p[0] <= 1 and p[0] == pytest.approx(math.exp(logp[0]), rel=1e-5)
    assert math.isnan(p[1]) and math.isnan(logp[1])


def _level_call(config, level, home, **extra):
    from tasks.evaluate import evaluate_level

    ws = Workspace.at(home)
    cid = content_id(config.checkpoint)
    return evaluate_level.fn(run_id=config.resolved_run_id(cid), iteration=0, config=config, level=level,
                             checkpoint_id=cid, cache_root=str(ws.frame_cache_dir),
                             out_dir=str(ws.run_dir(config.resolved_run_id(cid)) / "eval" / config.resolved_label()),
                             catalog_file=str(ws.catalog_path), **extra)


def test_level_task_writes_parquet_and_catalog_rows(care_home, demo_root, tiny_model_dir):
    ws = Workspace.at(care_home)
    cache_demo(care_home, demo_root, files=LEVEL_FILES)
    ckpt = make_initial_checkpoint(tiny_model_dir, ws.run_dir("run-a") / "checkpoints" / "iter-00000")
    assert owning_run(str(ckpt)) == "run-a" and model_path(str(ckpt)).endswith("policy")
    config = EvalConfig(checkpoint=str(ckpt), data_root=str(demo_root), frames=FRAMES, label="before-rl",
                        decoding={"max_new_tokens": 12}, limit_per_level=3, batch_size=2)
    first = [_level_call(config, level, care_home) for level in ("L1", "L2")]
    for m, level in zip(first, ("L1", "L2"), strict=True):
        assert m["run_id"] == "run-a" and m["label"] == "before-rl" and m["level"] == level and m["n"] == 3
        assert m["path"] == str(ws.run_dir("run-a") / "eval" / "before-rl" / f"{level}.parquet")
        table = pq.read_table(m["path"])
        assert table.num_rows == 3 and set(table.column("level").to_pylist()) == {level}
        rows = table.to_pylist()
        assert all(r["checkpoint_id"] == content_id(str(ckpt)) and r["max_new_tokens"] == 12 and r["nframes"] == 4
                   and r["completion_tokens"] <= 12 and len(r["judge_labels"]) == 2 for r in rows)
        assert [r["correct"] for r in rows] == [r["prediction"] == r["gold"] for r in rows]
        assert sum(r["correct"] for r in rows) == m["accuracy"]["correct"]
    keys = "select run_id, checkpoint_id, label, level, judge from eval_results order by level, judge"
    before = catalog.query(keys, path=ws.catalog_path)
    assert len(before) == 2 * 3 and {k[:3] for k in before} == {("run-a", content_id(str(ckpt)), "before-rl")}
    assert {k[4] for k in before} == {"accuracy", "rule@v1",
                                      "reference_likelihood@v1[reference=policy,threshold=0.5]"}
    again = _level_call(config, "L1", care_home)  # same seed, same outputs; rows replaced, not added
    assert pq.read_table(again["path"]).column("completion").to_pylist() == \
        pq.read_table(first[0]["path"]).column("completion").to_pylist()
    assert catalog.query(keys, path=ws.catalog_path) == before
    assert evals.refresh_eval_predictions_view(ws.runs_dir, path=ws.catalog_path)
    assert catalog.query("select count(*) from eval_predictions", path=ws.catalog_path) == [(6,)]


def test_config_errors_name_the_field(demo_root):
    from care.config import ConfigError, validate_config

    base = {"checkpoint": "m", "data_root": str(demo_root)}
    with pytest.raises(ConfigError, match="judges"):
        validate_config(EvalConfig, {**base, "judges": [{"name": "rule"}, {"name": "rule"}]})
    with pytest.raises(ConfigError, match="likelihood_model"):
        validate_config(EvalConfig, {**base, "judges": [{"name": "reference_likelihood", "reference": "ema"}]})
    assert EvalConfig(**base).frames.nframes == 16 and EvalConfig(**base).decoding.top_k == 0


def test_a_dumped_config_loads_back_as_a_deployment_parameter_does():
    # a deployment's parameters travel as JSON and are validated again; the judges' unset reference must not turn
    # into an explicit one that then disagrees with likelihood_model (it did: 'ema' against 'policy')
    for likelihood_model in ("policy", "reference"):
        config = EvalConfig(checkpoint="m", data_root="d", likelihood_model=likelihood_model)
        again = EvalConfig.model_validate(config.model_dump(mode="json"))
        assert again == config
        assert [j.reference for j in again.judge_configs() if j.name == "reference_likelihood"] == [likelihood_model]


def test_flow_run_then_rerun_is_all_cache_hits(prefect_harness, care_home, demo_root, tiny_model_dir, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.evaluate import evaluate

    ws = Workspace.at(care_home)
    config = EvalConfig(checkpoint=str(tiny_model_dir), data_root=str(demo_root), frames=FRAMES, levels=["L1", "L2"],
                        decoding={"max_new_tokens": 8}, limit_per_level=2, label="base")
    first = evaluate(config, home=str(care_home))
    assert [m["cache_hit"] for m in first["levels"]] == [False, False]
    assert "accuracy" in capsys.readouterr().out  # the rich table went to stdout
    count = "select count(*) from eval_results where run_id = ?"
    assert catalog.query(count, [first["run_id"]], path=ws.catalog_path) == [(3 * 3,)]  # L1, L2, all x 3 rows
    second = evaluate(config, home=str(care_home))
    assert [m["cache_hit"] for m in second["levels"]] == [True, True]
    assert catalog.query(count, [first["run_id"]], path=ws.catalog_path) == [(3 * 3,)]
    assert catalog.query("select kind, status from runs where run_id = ?", [first["run_id"]],
                         path=ws.catalog_path) == [("eval", "completed")]
    assert [r["level"] for r in second["results"]] == ["L1", "L2", "all"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[first["artifact_key"], first["artifact_key"] + "-report"])))
    assert {a.type for a in found} == {"table", "markdown"}
    assert second["results"][2]["n"] == 4


def test_care_eval_without_a_checkpoint_is_a_one_line_error(demo_root, capsys):
    from care.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--data-root", str(demo_root), "--levels", "L1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "Field required" in err and "Traceback" not in err


def test_likelihood_model_reference_reads_the_checkpoint_reference(tmp_path, demo_root, tiny_model_dir):
    from care.errors import CareError
    from care.eval.evaluate import load_likelihood_model

    ckpt = make_initial_checkpoint(tiny_model_dir, tmp_path / "iter-00000")
    policy, processor = load_model(model_path(str(ckpt))), load_processor(model_path(str(ckpt)))
    config = EvalConfig(checkpoint=str(ckpt), data_root=str(demo_root), likelihood_model="reference")
    assert [j.reference for j in config.judge_configs() if j.name == "reference_likelihood"] == ["reference"]
    scorer = load_likelihood_model(config, policy, processor, "cpu", None)
    assert scorer is not policy
    assert all(a.equal(b) for a, b in zip(scorer.parameters(), policy.parameters(), strict=True))
    assert load_likelihood_model(config.model_copy(update={"likelihood_model": "policy"}), policy, processor,
                                 "cpu", None) is policy
    plain = config.model_copy(update={"checkpoint": str(tiny_model_dir)})  # a model folder has no reference/
    with pytest.raises(CareError, match="reference/"):
        load_likelihood_model(plain, policy, processor, "cpu", None)


def test_likelihood_model_folder_must_share_the_tokenizer(tmp_path, demo_root, tiny_model_dir):
    from care.errors import CareError
    from care.eval.evaluate import load_likelihood_model
    from care.models.tiny import make_tiny_model

    policy, processor = load_model(tiny_model_dir), load_processor(tiny_model_dir)
    same = EvalConfig(checkpoint=str(tiny_model_dir), data_root=str(demo_root), likelihood_model=str(tiny_model_dir))
    assert load_likelihood_model(same, policy, processor, "cpu", None) is not policy
    other = make_tiny_model(tmp_path / "other", corpus=["a different corpus, a different vocabulary"] * 4, seed=1)
    with pytest.raises(CareError, match="tokenizer differs"):
        load_likelihood_model(same.model_copy(update={"likelihood_model": str(other)}), policy, processor, "cpu", None)
