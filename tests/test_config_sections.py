"""Typed stage sections (care.sections): the pipeline's sft / rl / eval and the RL run's periodic eval are typed
in the flows' parameter schemas, refuse unknown keys by name, and stand for what was written; the optimizer options
SFT and RL share keep each stage's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from care.config import ConfigError, load_config
from care.pipeline import EvalSection, PipelineConfig, RLSection, SFTSection
from care.sections import Section
from care.train.config import OptimConfig, RLConfig
from care.train.optimizer_config import OptimizerConfig, SFTOptimizer
from care.train.sft_config import SFTConfig

REPO = Path(__file__).parents[1]
SHARED = ("learning_rate", "weight_decay", "weight_decay_exempt", "betas", "max_grad_norm", "lr_scheduler",
          "warmup_steps", "precision", "gradient_checkpointing")


def _definition(schema: dict, prop: dict) -> dict:
    assert "$ref" in prop, prop  # a typed section, not a bare object
    return schema["definitions"][prop["$ref"].rsplit("/", 1)[-1]]


def test_flow_parameter_schemas_type_the_sections():
    from flows.pipeline import pipeline
    from flows.retrain import retrain
    from flows.rl import rl

    schema = pipeline.parameters.model_dump()
    config = schema["definitions"]["PipelineConfig"]["properties"]
    sections = {name: _definition(schema, config[name]) for name in ("sft", "rl", "eval")}
    assert {"steps", "learning_rate", "betas"} <= set(sections["sft"]["properties"])
    assert {"iterations", "algo", "optim", "rollout", "eval"} <= set(sections["rl"]["properties"])
    assert {"levels", "decoding", "judges", "frames"} <= set(sections["eval"]["properties"])
    # what the pipeline fills in is not an option of the section
    assert not {"model", "data_root", "frames", "seed"} & set(sections["sft"]["properties"])
    assert not {"model", "data_root", "frames", "seed"} & set(sections["rl"]["properties"])
    assert not {"checkpoint", "data_root", "label"} & set(sections["eval"]["properties"])
    assert all(s.get("additionalProperties") is False for s in sections.values())
    assert sections["rl"]["properties"]["iterations"]["minimum"] == 1  # constraints come along
    eval_frames = _definition(schema, sections["eval"]["properties"]["frames"])
    assert eval_frames["properties"]["nframes"]["default"] is None  # unset = the pipeline's frames

    for flow, root in ((rl, "RLConfig"), (retrain, "RLConfig")):
        flow_schema = flow.parameters.model_dump()
        periodic = _definition(flow_schema, flow_schema["definitions"][root]["properties"]["eval"])
        assert {"levels", "decoding", "frames"} <= set(periodic["properties"])
        assert not {"checkpoint", "data_root"} & set(periodic["properties"])
        assert set(_definition(flow_schema, periodic["properties"]["frames"])["properties"]) == {"temporal"}


@pytest.mark.parametrize(("section", "field"), [
    ({"rl": {"iterationz": 3}}, "rl.iterationz"),
    ({"rl": {"optim": {"learning_rat": 1e-4}}}, "rl.optim.learning_rat"),
    ({"rl": {"eval": {"levelz": ["L1"]}}}, "rl.eval.levelz"),
    ({"rl": {"model": "m"}}, "rl.model"),  # filled in by the pipeline, not an option of the section
    ({"sft": {"stepz": 3}}, "sft.stepz"),
    ({"eval": {"checkpoint": "c"}}, "eval.checkpoint"),
    ({"eval": {"frames": {"nframe": 16}}}, "eval.frames.nframe"),
])
def test_unknown_key_in_a_section_is_one_line_naming_it(tmp_path, section, field):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, path)
    assert str(err.value) == f"{path}: {field}: unknown key (check the spelling; see the config reference in README)"


def test_checks_across_fields_name_the_section():
    with pytest.raises(ValueError, match=r"eval\.frames: Value error, min_frames \(20\) is larger than max_frames"):
        PipelineConfig.model_validate({"eval": {"frames": {"min_frames": 20}}})
    # the same override is fine when the pipeline's frames allow it
    frames = PipelineConfig.model_validate({"frames": {"max_frames": 32}, "eval": {"frames": {"min_frames": 20}}})
    assert frames.eval_config("c", "d", "base").frames.min_frames == 20
    with pytest.raises(ValueError, match=r"rl: Value error, .*cannot be split"):
        PipelineConfig.model_validate({"rl": {"rollout": {"group_size": 3, "prompts_per_iteration": 1},
                                              "optim": {"num_processes": 2}}})


def test_the_periodic_eval_section_takes_only_the_temporal_positions_of_the_frames():
    base = {"model": "m", "data_root": "d", "frames": {"nframes": 4}}
    with pytest.raises(ValueError, match=r"eval\.frames\.nframes"):
        RLConfig.model_validate({**base, "eval": {"frames": {"nframes": 16}}})
    config = RLConfig.model_validate({**base, "eval": {"frames": {"temporal": "fixed_1s"}, "levels": ["L1"]}})
    evaluation = config.eval_config("c")
    assert (evaluation.frames.nframes, evaluation.frames.temporal, evaluation.levels) == (4, "fixed_1s", ["L1"])


@pytest.mark.parametrize("path", [REPO / "care" / "configs" / "demo.yaml", REPO / "data" / "seedbench_r1.yaml"])
def test_sections_dump_as_written(path):
    """A section's dump is its YAML, so the pipeline's run id hashes what was written, and a dumped config loads
    back to the same stage configs."""
    written = yaml.safe_load(path.read_text())
    config = load_config(PipelineConfig, path)
    dumped = config.model_dump(mode="json")
    for name in ("sft", "rl", "eval"):
        assert dumped[name] == yaml.safe_load(yaml.safe_dump(written.get(name, {}))), name
    again = PipelineConfig.model_validate(dumped)
    assert again.run_id() == config.run_id()
    assert again.rl_config("m", "d") == config.rl_config("m", "d")
    assert again.sft_config("m", "d") == config.sft_config("m", "d")
    assert again.eval_config("c", "d", "rl") == config.eval_config("c", "d", "rl")


def test_the_algorithm_fills_what_the_rl_section_leaves_unset_through_a_dump_and_prefect():
    from flows.pipeline import pipeline

    config = PipelineConfig.model_validate({"rl": {"algo": "grpo", "optim": {"learning_rate": 1e-4}}})
    reloaded = PipelineConfig.model_validate(config.model_dump(mode="json"))
    via_prefect = pipeline.validate_parameters({"config": config})["config"]
    for cfg in (config, reloaded, via_prefect):
        optim = cfg.rl_config("m", "d").optim
        assert (optim.kl_beta, optim.ref_mode, optim.learning_rate) == (0.1, "frozen", 1e-4)  # grpo's KL defaults
    set_beta = PipelineConfig.model_validate({"rl": {"algo": "grpo", "optim": {"kl_beta": 0.0}}})
    assert set_beta.rl_config("m", "d").optim.kl_beta == 0.0


def test_sections_are_sections():
    assert all(issubclass(s, Section) for s in (SFTSection, RLSection, EvalSection))
    assert PipelineConfig().rl.model_dump() == {} and PipelineConfig().sft == SFTSection()


def test_optimizer_defaults_per_stage_stay_what_they_are():
    sft = SFTConfig(model="m", data_root="d")
    rl = OptimConfig()
    assert issubclass(SFTConfig, OptimizerConfig) and issubclass(SFTConfig, SFTOptimizer)
    assert issubclass(OptimConfig, OptimizerConfig)
    assert {k: getattr(sft, k) for k in SHARED} == {
        "learning_rate": 1e-5, "weight_decay": 0.0, "weight_decay_exempt": "bias_and_norm", "betas": (0.9, 0.999),
        "max_grad_norm": 1.0, "lr_scheduler": "cosine", "warmup_steps": 0, "precision": "auto",
        "gradient_checkpointing": False}
    assert {k: getattr(rl, k) for k in (*SHARED, "adam_eps")} == {
        "learning_rate": 1e-6, "weight_decay": 0.01, "weight_decay_exempt": "bias_and_norm", "betas": (0.9, 0.999),
        "max_grad_norm": 5.0, "lr_scheduler": "cosine", "warmup_steps": 0, "precision": "auto",
        "gradient_checkpointing": False, "adam_eps": 1e-8}
    # one description and constraint per option, whatever the stage's default
    for name in SHARED:
        assert SFTConfig.model_fields[name].description == OptimConfig.model_fields[name].description
        assert SFTConfig.model_fields[name].metadata == OptimConfig.model_fields[name].metadata
    with pytest.raises(ValueError, match="learning_rate"):
        SFTConfig(model="m", data_root="d", learning_rate=0)
    # the layouts users write: SFT's at the top level, RL's under optim
    assert SFTConfig(model="m", data_root="d", learning_rate=2e-3).learning_rate == 2e-3
    assert RLConfig(model="m", data_root="d", optim={"learning_rate": 1e-4}).optim.learning_rate == 1e-4
