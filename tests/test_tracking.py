"""Experiment trackers (``care.tracking``, accelerate's tracker classes): the SFT loop with ``report_to:
[tensorboard]`` leaves TensorBoard event files that hold exactly the catalog's metrics; tracking options stay
out of run ids and cache keys; an unknown tracker or a missing tracker library is a one-line error. Also the
per-stage peak memory helper (``care.train.memory``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from care import tracking
from care.config import ConfigError, validate_config
from care.models.samples import DataSpec
from care.store import runs
from care.train.config import RLConfig
from care.train.memory import Peak
from care.train.sft import run_sft
from care.train.sft_config import SFTConfig
from tests.rl_helpers import SAMPLING, cache_demo
from tests.tracking_helpers import catalog_scalars, tensorboard_scalars

COT = "training_with_cot_6k.jsonl"


@pytest.fixture(scope="module")
def data(tmp_path_factory, demo_root) -> DataSpec:
    home = tmp_path_factory.mktemp("tracking_home")
    return cache_demo(home, demo_root, files=(COT,)).model_copy(update={"annotation_file": COT})


def test_sft_loop_mirrors_the_catalog_to_tensorboard(data, tiny_model_dir, demo_root, tmp_path):
    cfg = SFTConfig(model=str(tiny_model_dir), data_root=str(demo_root), shuffle_options=False, frames=SAMPLING,
                    steps=4, batch_size=4, learning_rate=2e-3, log_every=2, check_prompts=2,
                    check_max_new_tokens=8, checkpoint_every=100, report_to=["tensorboard"])
    db, run_id = tmp_path / "care.duckdb", cfg.run_id()
    folder = cfg.tracking_folder(tmp_path)
    assert folder == tmp_path / "tracking"
    trackers = tracking.start(run_id, cfg.report_to, folder, cfg.model_dump(mode="json"))
    assert [t.name for t in trackers] == ["tensorboard"]
    try:
        run_sft(config=cfg, sample_set=data.load(), cache=data.cache(), run_dir=tmp_path / "run", progress=False,
                on_log=lambda step, m: runs.record_metrics(run_id, step, m, stage="sft", path=db))
        # a NaN is stored as NULL (no value) and so not mirrored; a run without open trackers is not mirrored
        runs.record_metrics(run_id, 9, {"probe": 2.5, "not_a_number": math.nan}, stage="extra", path=db)
        runs.record_metrics("other-run", 1, {"probe": 1.0}, stage="extra", path=db)
    finally:
        tracking.finish(run_id)
    runs.record_metrics(run_id, 10, {"after_finish": 1.0}, stage="extra", path=db)  # closed: catalog only

    want, got = catalog_scalars(db, run_id), tensorboard_scalars(folder / run_id)
    assert ("extra/after_finish", 10) in want and ("extra/probe", 9) in want
    del want[("extra/after_finish", 10)]
    assert set(got) == set(want)
    assert {tag for tag, _ in got} >= {"sft/loss", "sft/grad_norm", "sft/tokens_per_second", "sft/check_format"}
    assert sorted(step for tag, step in got if tag == "sft/loss") == [2, 4]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key  # event files hold float32
    assert [p.name for p in folder.iterdir()] == [run_id]
    # the config is stored once as hyperparameters (flattened, as TensorBoard's hparams take scalars)
    (hparams,) = (folder / run_id).glob("*/hparams.yml")
    stored = yaml.safe_load(hparams.read_text())
    assert stored["learning_rate"] == cfg.learning_rate and stored["frames.nframes"] == SAMPLING.nframes


def test_tracking_options_change_no_run_id_and_no_sft_cache_key(demo_root):
    from tasks.sft import _sft_key

    base = {"model": "some/model", "data_root": str(demo_root)}
    tracked = {"report_to": ["tensorboard"], "tracking_dir": "/elsewhere/tb"}
    assert RLConfig(**base, **tracked).run_id() == RLConfig(**base).run_id()
    assert SFTConfig(**base, **tracked).run_id() == SFTConfig(**base).run_id()
    assert SFTConfig(**base, learning_rate=1e-3).run_id() != SFTConfig(**base).run_id()
    spec = DataSpec(data_root=str(demo_root), annotation_file=COT, cache_root="/c", sampling=SAMPLING)

    def key(cfg: SFTConfig) -> str:
        return _sft_key(None, {"run_id": "r", "config": cfg, "data": spec})

    assert key(SFTConfig(**base, **tracked)) == key(SFTConfig(**base))
    assert key(SFTConfig(**base, steps=7)) != key(SFTConfig(**base))


def test_unknown_tracker_is_refused_with_the_field_name():
    with pytest.raises(ConfigError, match=r"report_to.*unknown tracker\(s\) \['tensorbored'\].*tensorboard"):
        validate_config(RLConfig, {"model": "m", "data_root": "d", "report_to": ["tensorbored"]})


def test_missing_tracker_library_is_a_one_line_error(tmp_path):
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [n for n in tracking.known_trackers() if n not in available]
    # the project's environments install tensorboard only (the tracking extra), never wandb, mlflow and the rest
    assert missing, "every tracker library accelerate knows is installed: the error path cannot be exercised"
    name = missing[0]
    package = tracking.PACKAGES.get(name, name)
    with pytest.raises(tracking.TrackingError, match=rf"^report_to: {name} needs .*pip install {package}"):
        tracking.start("r", [name], tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_peak_memory_of_a_stage_is_its_own():
    mib = 256
    with Peak() as big:
        block = np.ones(mib * 1024 * 1024, dtype=np.uint8)  # written, so resident
        del block
    assert big.source in ("rss", "rss_process", "cuda")
    if big.source == "cuda":
        pytest.skip("CUDA is initialised in this process: the peak is of GPU memory")
    assert big.mib >= mib
    assert big.metrics("rollout") == {"rollout_peak_memory_mib": big.mib}
    with Peak() as small:
        small_block = np.ones(1024, dtype=np.uint8)
        del small_block
    if big.source == "rss":  # the peak was reset at the start of the stage
        assert small.mib < big.mib - mib / 2
    assert small.fields()["peak_memory_source"] == big.source
