"""Accuracy and consistency per domain: rows whose annotation carries EgoPlan-Bench2's ``domain`` (SEED-Bench-R1's
L3 is built from EgoPlan-Bench2) get records ``L3/<domain>`` beside their level's, in the manifest, the
predictions Parquet, ``eval_results`` and the tables; the pooled ``all`` still pools levels only."""

from __future__ import annotations

import pyarrow.parquet as pq

from care.data.annotations import load_annotations
from care.data.demo import L3_DOMAINS
from care.eval.evaluate import overall_record, sample_domain
from care.eval.scoring import with_domains
from care.eval_schema import EvalConfig
from care.media.sampling import FrameSampling
from care.report import pipeline_table
from care.store import catalog
from care.workspace import Workspace
from tests.rl_helpers import cache_demo
from tests.test_evaluate import _level_call

FRAMES = FrameSampling(nframes=4)


def test_demo_l3_rows_carry_a_domain_and_the_other_levels_none(demo_root):
    l3 = load_annotations(demo_root / "annotations" / "validation_L3.jsonl", demo_root, shuffle_options=False)
    assert {sample_domain(s) for s in l3.samples} == set(L3_DOMAINS)
    l1 = load_annotations(demo_root / "annotations" / "validation_L1.jsonl", demo_root, shuffle_options=False)
    assert {sample_domain(s) for s in l1.samples} == {None}


def test_level_with_domains_writes_their_records_rows_and_columns(care_home, demo_root, tiny_model_dir):
    ws = Workspace.at(care_home)
    cache_demo(care_home, demo_root, files=("validation_L1.jsonl", "validation_L3.jsonl"))
    config = EvalConfig(checkpoint=str(tiny_model_dir), data_root=str(demo_root), frames=FRAMES, label="domains",
                        decoding={"max_new_tokens": 8}, limit_per_level=8, batch_size=4)
    l1, l3 = (_level_call(config, level, care_home) for level in ("L1", "L3"))
    assert l1["groups"] == []
    names = [g["level"] for g in l3["groups"]]
    assert names == sorted(f"L3/{d}" for d in L3_DOMAINS)  # 8 rows dealt round-robin: 2 per domain
    assert [g["accuracy"]["n"] for g in l3["groups"]] == [2, 2, 2, 2]
    assert sum(g["accuracy"]["correct"] for g in l3["groups"]) == l3["accuracy"]["correct"]
    for g in l3["groups"]:
        assert {s["level"] for s in g["consistency"]} == {g["level"]}
        assert [s["judge_label"] for s in g["consistency"]] == [s["judge_label"] for s in l3["consistency"]]
        assert sum(s["n"] for s in g["consistency"][:1]) == g["accuracy"]["n"]
    table = pq.read_table(l3["path"]).to_pylist()
    by_domain = {d: sum(r["correct"] for r in table if r["domain"] == d) for d in L3_DOMAINS}
    assert by_domain == {g["level"].split("/", 1)[1]: g["accuracy"]["correct"] for g in l3["groups"]}
    assert {r["domain"] for r in pq.read_table(l1["path"]).to_pylist()} == {None}

    levels = {row[0] for row in catalog.query("select distinct level from eval_results where label = 'domains'",
                                              path=ws.catalog_path)}
    assert levels == {"L1", "L3", *names}
    pooled = overall_record([l1, l3])
    assert pooled["accuracy"]["n"] == l1["n"] + l3["n"]  # domains are not counted twice
    assert [r["level"] for r in with_domains([l1, l3])] == ["L1", "L3", *names]
    table_rows = pipeline_table({"after RL": {"levels": [l1, l3]}})
    assert [r["level"] for r in table_rows] == ["L1", "L3", *names]
