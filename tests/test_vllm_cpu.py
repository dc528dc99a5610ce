"""The ``vllm`` rollout backend with vLLM itself, on CPU: the CPU build of vLLM in ``.venv-vllm`` (``make vllm-env``).

Marked ``vllm`` (``make test-vllm``; ``.ci/run`` runs it after ``make test``). Every test starts real engines in a
real worker subprocess on the tiny Qwen2.5-VL variant that vLLM accepts (``care models tiny --variant vllm``,
head_dim 32), with the demo set's real frames. An engine start costs about 50 s on 2 cores (import + eager
start-up), so the checks are grouped per engine start. What is checked:

* one worker run: a video + image prompt, an image-only prompt, a text-only prompt; a repeated seeded request
  gives the same tokens; ``logit_bias`` keeps sampling inside an allowed set; the ``(frames, metadata)`` path,
  where the same frames at another fps give other greedy log-probs and the same fps the same ones;
* the rollout stage: rows and HF behaviour log-probs, the engine's log-probs within 1e-2 of the HF forward's in
  fp32 + eager, a re-run with the same seed sampling the same tokens, the engine settings in the manifest, and
  nothing left in the iteration folder, ``$TMPDIR`` or ``~`` afterwards;
* engine errors (a model vLLM refuses) surfacing as ``VllmBackendError`` with the worker's stderr tail;
* a worker SIGKILLed during generation leaving no process and no scratch files behind;
* the resident engine (``rollout.vllm_resident``): refreshed to other weights it samples exactly the tokens a
  fresh engine on those weights samples; consecutive stages of a run share one engine, which
  ``close_engines`` stops without leaving a process or a file; an engine killed between stages fails the next
  stage with its name, and the re-run starts a fresh one;
* a ``care rl`` run with ``rollout.backend: vllm`` whose rollouts ``care sql`` lists with ``backend = 'vllm'``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from care.data.demo import benchmark_corpus, demo_corpus
from care.models.inputs import PromptItem
from care.models.loading import load_processor
from care.models.rollout_config import RolloutConfig
from care.models.samples import prompt_items
from care.models.tiny import TINY_VARIANTS, make_tiny_model
from care.models.vllm_backend import (
    ENGINE_DIR,
    ResidentEngine,
    VllmBackendError,
    build_requests,
    close_engines,
    engine_settings,
    resident_engines,
    run_worker,
    worker_command,
    write_requests,
)
from care.store.rollout_log import GENERATED_SCHEMA
from care.train.checkpoint import make_initial_checkpoint
from care.train.policy_io import policy_path
from care.train.rollout import run_rollout_stage
from tests.rl_helpers import cached_samples

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("CARE_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module", autouse=True)
def _vllm_environment():
    """The environment must exist: ``make test-vllm`` builds it; a missing one is a failure, not a skip."""
    if not Path(VLLM_PYTHON).is_file():
        pytest.fail(f"{VLLM_PYTHON} does not exist: run `make vllm-env` (or `make test-vllm`, which builds it)")
    probe = subprocess.run([VLLM_PYTHON, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, f"{VLLM_PYTHON} cannot import vllm:\n{probe.stderr[-3000:]}"


@pytest.fixture(autouse=True)
def _no_engine_outlives_a_test():
    yield
    close_engines()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_root):
    root = tmp_path_factory.mktemp("vllm-cpu")
    model = make_tiny_model(root / "tiny-vllm", corpus=benchmark_corpus(demo_root) + demo_corpus(), seed=0,
                            **TINY_VARIANTS["vllm"])
    checkpoint = make_initial_checkpoint(model, root / "iter-00000")
    samples, cache = cached_samples(Path(demo_root), root / "cache", 3)
    # other weights of the same architecture and tokenizer (the seed only draws the weights)
    other = make_tiny_model(root / "tiny-vllm-b", corpus=benchmark_corpus(demo_root) + demo_corpus(), seed=1,
                            **TINY_VARIANTS["vllm"])
    return {"root": root, "model": model, "checkpoint": checkpoint, "samples": samples, "cache": cache,
            "processor": load_processor(policy_path(checkpoint)),
            "checkpoint_b": make_initial_checkpoint(other, root / "b" / "iter-00000")}


def _config(**kw) -> RolloutConfig:
    base = {"backend": "vllm", "vllm_python": VLLM_PYTHON, "group_size": 2, "generation_batch_prompts": 2,
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 10}}
    return RolloutConfig(**{**base, **kw})


def _outside_files() -> set[str]:
    """What vLLM, torch.compile and the engine's sockets write outside the workspace when not redirected."""
    tmp, home = Path(tempfile.gettempdir()), Path.home()
    found = {str(p) for p in tmp.glob("torchinductor_*")} | {str(p) for p in tmp.glob("*ipc*")}
    found |= {str(p) for p in (home / ".cache" / "vllm", home / ".config" / "vllm") if p.exists()}
    return found


def _text_only(item: PromptItem) -> PromptItem:
    texts = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
              else [c for c in m["content"] if c.get("type") == "text"]} for m in item.messages]
    return PromptItem(messages=texts)


def _run(setup, rows: list[dict], tmp_path: Path, *, config: RolloutConfig, seed: int = 0) -> list[dict]:
    request, response = tmp_path / "req.parquet", tmp_path / "resp.parquet"
    write_requests(request, rows)
    engine = engine_settings(config)
    run_worker(worker_command(VLLM_PYTHON, request, response, model=policy_path(setup["checkpoint"]),
                              config=config, seed=seed, engine=engine), scratch=tmp_path / "scratch", engine=engine)
    assert not (tmp_path / "scratch").exists()
    return pq.read_table(response).to_pylist()


def test_one_engine_serves_video_image_and_text_prompts_reproducibly(setup, tmp_path):
    processor = setup["processor"]
    video = next(s for s in setup["samples"] if s.video)
    image_only = next(s for s in setup["samples"] if not s.video)
    (v_item, i_item), (v_fps, _) = prompt_items([video, image_only], setup["cache"])
    text_item = _text_only(v_item)
    sampled = _config(group_size=3)
    vocab = processor.tokenizer
    allowed = [vocab.convert_tokens_to_ids(t) for t in ("A", "B")] + [vocab.eos_token_id]
    rows = build_requests(processor, [v_item, i_item, text_item, v_item], [v_fps, None, None, v_fps],
                          config=sampled, seeds=[11, 22, 33, 11])  # prompt 3 repeats prompt 0 and its seed
    restricted = build_requests(processor, [i_item], [None], config=sampled, seeds=[44])[0]
    restricted["suppress_token_ids"] = [t for t in range(len(vocab)) if t not in allowed]
    greedy = build_requests(processor, [v_item] * 3, [v_fps / 4, v_fps, v_fps], config=sampled, seeds=[5, 5, 6])
    for r in greedy:
        r.update(temperature=0.0, n=1)  # greedy (vLLM wants n = 1 then): the seed does not matter
    slow, *fast_twice = greedy
    requests = [*rows, restricted, slow, *fast_twice]
    for k, r in enumerate(requests):
        r["prompt_index"] = k
    before = _outside_files()
    out = _run(setup, requests, tmp_path, config=sampled)
    assert _outside_files() <= before  # caches and IPC sockets went to the scratch folder, now removed
    by_prompt: dict[int, list[dict]] = {}
    for r in out:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    assert [len(by_prompt[k]) for k in range(len(requests))] == [3, 3, 3, 3, 3, 1, 1, 1]
    for k in range(4):  # every modality generated, one log-prob per token, all finite
        for r in by_prompt[k]:
            assert r["token_ids"] and len(r["engine_logprobs"]) == len(r["token_ids"])
            assert all(math.isfinite(v) and v <= 0 for v in r["engine_logprobs"])
    # the prompts' expanded lengths: video + image > image only > text only
    lengths = [by_prompt[k][0]["prompt_tokens"] for k in range(3)]
    assert lengths[0] > lengths[1] > lengths[2], lengths
    # same prompt, same seed: the same samples; the children of one request differ by seed
    assert [r["token_ids"] for r in by_prompt[0]] == [r["token_ids"] for r in by_prompt[3]]
    assert len({tuple(r["token_ids"]) for r in by_prompt[0]}) > 1
    # logit_bias -inf on everything but A, B and EOS: nothing else is ever sampled
    assert all(set(r["token_ids"]) <= set(allowed) for r in by_prompt[4])
    # the (frames, metadata) path: another rate moves the temporal positions; the same rate is deterministic
    slow_run, fast_a, fast_b = by_prompt[5][0], by_prompt[6][0], by_prompt[7][0]
    assert fast_a["token_ids"] == fast_b["token_ids"]
    assert np.allclose(fast_a["engine_logprobs"], fast_b["engine_logprobs"], atol=1e-6)
    n = min(len(slow_run["engine_logprobs"]), len(fast_a["engine_logprobs"]))
    assert not np.allclose(slow_run["engine_logprobs"][:n], fast_a["engine_logprobs"][:n], atol=1e-6)


def test_rollout_stage_with_vllm_on_cpu_matches_hf_scoring_and_repeats(setup, tmp_path):
    config = _config(group_size=2, vllm_resident=False)  # a fresh engine per stage (the resident one: below)
    kw = {"run_id": "v", "iteration": 1, "checkpoint": setup["checkpoint"], "samples": setup["samples"],
          "cache": setup["cache"], "config": config, "seed": 3}
    before = _outside_files()
    first = run_rollout_stage(out_dir=tmp_path / "a", **kw)
    second = run_rollout_stage(out_dir=tmp_path / "b", **kw)
    assert _outside_files() <= before
    assert (first["vllm_device"], first["vllm_dtype"], first["vllm_enforce_eager"]) == ("cpu", "float32", True)
    assert first["vllm_resident"] is False and "vllm_engine" not in first
    # fp32 + eager: the engine samples from the distribution the HF forward scores (2e-3 measured; bf16: 9e-3)
    assert first["engine_logprob_gap"] < 1e-2, first
    for manifest, folder in ((first, tmp_path / "a"), (second, tmp_path / "b")):
        assert sorted(p.name for p in folder.iterdir()) == ["generated.parquet", "vllm_response.parquet"]
        table = pq.read_table(manifest["path"])
        assert table.schema.equals(GENERATED_SCHEMA) and table.num_rows == len(setup["samples"]) * 2
    a, b = (pq.read_table(m["path"]).to_pylist() for m in (first, second))
    assert {r["backend"] for r in a} == {"vllm"}
    assert all(len(r["behaviour_logprobs"]) == r["completion_tokens"] > 0 for r in a)
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]  # same seeds, same samples
    assert [r["behaviour_logprobs"] for r in a] == [r["behaviour_logprobs"] for r in b]


def test_an_engine_error_surfaces_with_the_worker_stderr(setup, tmp_path, tiny_model_dir):
    """The default tiny model (head_dim 16) is refused by vLLM's attention: the stage says so, and cleans up."""
    checkpoint = make_initial_checkpoint(tiny_model_dir, tmp_path / "iter-00000")
    with pytest.raises(VllmBackendError) as err:
        run_rollout_stage(run_id="e", iteration=0, checkpoint=checkpoint, samples=setup["samples"][:1],
                          cache=setup["cache"], config=_config(), seed=0, out_dir=tmp_path / "out")
    message = str(err.value)
    first = message.splitlines()[0]  # the resident engine (the default): named, with its python
    assert first.startswith("vLLM engine vllm-engine-") and VLLM_PYTHON in first, first
    # vLLM 0.32 on CPU starts the engine and fails in its first forward: the engine core dies
    assert "failed generating vllm_request.parquet: EngineDeadError" in first, first
    assert len(message.splitlines()) > 2, message  # the stderr tail, not just a status
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vllm_request.parquet"]
    assert not (tmp_path / ENGINE_DIR).exists() and resident_engines() == []  # nothing kept of the failed engine


def test_a_killed_worker_leaves_no_process_and_no_files(setup, tmp_path):
    config = _config(group_size=4, sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 64})
    items, rates = prompt_items(setup["samples"], setup["cache"])
    request, response, scratch = tmp_path / "req.parquet", tmp_path / "resp.parquet", tmp_path / "scratch"
    write_requests(request, build_requests(setup["processor"], items * 8, rates * 8, config=config,
                                           seeds=list(range(len(items) * 8))))
    engine = engine_settings(config)
    command = worker_command(VLLM_PYTHON, request, response, model=policy_path(setup["checkpoint"]), config=config,
                             seed=0, engine=engine)
    before = _outside_files()
    # run_worker in a child process, which is SIGKILLed once the engine has started
    code = ("import sys, json, pathlib; from care.models.vllm_backend import run_worker, EngineSettings; "
            "a = json.loads(sys.argv[1]); run_worker(a['command'], scratch=pathlib.Path(a['scratch']), "
            "engine=EngineSettings(**a['engine']))")
    args = json.dumps({"command": command, "scratch": str(scratch), "engine": engine.__dict__})
    parent = subprocess.Popen([sys.executable, "-c", code, args], cwd=REPO)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and parent.poll() is None:
        stderr = scratch / "worker.stderr"
        if stderr.is_file() and "Starting to load model" in stderr.read_text(errors="replace"):
            break
        time.sleep(0.5)
    assert parent.poll() is None, "the worker finished or failed before it could be killed"
    workers = psutil.Process(parent.pid).children(recursive=True)  # the worker and vLLM's engine core
    assert workers
    os.kill(parent.pid, signal.SIGKILL)  # the stage's process dies: its worker and the engine must go too
    parent.wait()
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
    assert not response.exists()
    assert _outside_files() <= before  # what the engine wrote is in the scratch folder of the workspace only
    assert scratch.is_dir()
    # the stage's re-run starts from an empty scratch folder and removes it when its worker exits
    (scratch / "tmp" / "stale").write_text("left by the killed run")
    run_worker([sys.executable, "-c", "import os, sys; sys.exit(7 if os.path.exists(os.environ['TMPDIR'] "
                "+ '/stale') else 0)"], scratch=scratch)  # exit status 7 would raise VllmBackendError
    assert not scratch.exists()


def test_care_rl_with_the_vllm_backend_on_cpu(setup, tmp_path, demo_root):
    """Two RL iterations through the ``care`` command with ``rollout.backend: vllm``; ``care sql`` shows them."""
    from tests.fault_helpers import care, sql
    from tests.rl_helpers import cache_demo

    home = tmp_path / "home"
    cache_demo(home, Path(demo_root))
    cfg = {"model": str(setup["model"]), "data_root": str(demo_root), "iterations": 2, "shuffle_options": False,
           "run_name": "rl-vllm", "frames": {"nframes": 4},
           "rollout": {"backend": "vllm", "vllm_python": VLLM_PYTHON, "group_size": 2, "prompts_per_iteration": 2,
                       "sampling": {"max_new_tokens": 12}},
           "optim": {"learning_rate": 1e-3, "micro_batch_size": 4}}
    config = tmp_path / "rl.yaml"
    config.write_text(json.dumps(cfg))  # YAML is a superset of JSON
    proc = care(home, "rl", "--config", str(config), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = sql(home, "select backend, iteration, count(*) as n from rollouts where run_id = 'rl-vllm' "
                     "group by all order by all")
    assert rows == [{"backend": "vllm", "iteration": 0, "n": 4}, {"backend": "vllm", "iteration": 1, "n": 4}]
    # the resident engine (the default) was stopped when `care rl` exited, its scratch folder removed
    assert not list(home.rglob(".vllm-scratch")) and not list(home.rglob(ENGINE_DIR))
    assert not list(home.rglob("vllm_request.parquet"))


def _tokens(path: Path) -> list[list[int]]:
    return [r["token_ids"] for r in sorted(pq.read_table(path).to_pylist(),
                                           key=lambda r: (r["prompt_index"], r["sample_index"]))]


def test_a_refreshed_engine_samples_what_a_fresh_engine_on_the_same_weights_samples(setup, tmp_path):
    """Weights A, generate; refresh to weights B (A's folder removed meanwhile: the engine keeps nothing of
    it), generate; a fresh one-shot engine on B samples exactly the same tokens with the same seeds."""
    config = _config(group_size=3)
    items, rates = prompt_items(setup["samples"], setup["cache"])
    request = tmp_path / "req.parquet"
    write_requests(request, build_requests(setup["processor"], items, rates, config=config, seeds=[7, 8, 9]))
    weights_a = tmp_path / "a"
    shutil.copytree(policy_path(setup["checkpoint"]), weights_a)
    weights_b = policy_path(setup["checkpoint_b"])
    engine = ResidentEngine(VLLM_PYTHON, model_dir=weights_a, config=config, seed=0,
                            engine=engine_settings(config), scratch=tmp_path / "engine")
    try:
        on_a = engine.generate(request, tmp_path / "on_a.parquet", model_dir=weights_a)
        shutil.rmtree(weights_a)
        on_b = engine.generate(request, tmp_path / "on_b.parquet", model_dir=weights_b)
        again = engine.generate(request, tmp_path / "again.parquet", model_dir=weights_b)
        pid = engine.pid
    finally:
        engine.close()
    assert (on_a["refreshed"], on_b["refreshed"], again["refreshed"]) == (False, True, False)
    assert not psutil.pid_exists(pid) and not (tmp_path / "engine").exists()
    fresh = tmp_path / "fresh.parquet"
    run_worker(worker_command(VLLM_PYTHON, request, fresh, model=weights_b, config=config, seed=0,
                              engine=engine_settings(config)), scratch=tmp_path / "scratch",
               engine=engine_settings(config))
    assert _tokens(tmp_path / "on_b.parquet") == _tokens(fresh) == _tokens(tmp_path / "again.parquet")
    assert _tokens(tmp_path / "on_a.parquet") != _tokens(fresh)  # the weights decide: the refresh took effect
    by = {n: sorted(pq.read_table(tmp_path / f"{n}.parquet").to_pylist(),
                    key=lambda r: (r["prompt_index"], r["sample_index"])) for n in ("on_b", "fresh")}
    for refreshed, started in zip(by["on_b"], by["fresh"], strict=True):
        assert np.allclose(refreshed["engine_logprobs"], started["engine_logprobs"], atol=1e-5)


def _stage(setup, out_dir: Path, *, iteration: int, checkpoint, config: RolloutConfig) -> dict:
    return run_rollout_stage(run_id="res", iteration=iteration, checkpoint=checkpoint, samples=setup["samples"],
                             cache=setup["cache"], config=config, seed=3, out_dir=out_dir)


def test_consecutive_rollout_stages_share_one_engine_until_close_engines(setup, tmp_path):
    config = _config()
    run = tmp_path / "rollouts" / "run=res"
    before = _outside_files()
    first = _stage(setup, run / "iteration=0", iteration=0, checkpoint=setup["checkpoint"], config=config)
    second = _stage(setup, run / "iteration=1", iteration=1, checkpoint=setup["checkpoint_b"], config=config)
    retried = _stage(setup, run / "retry", iteration=1, checkpoint=setup["checkpoint_b"], config=config)
    assert first["vllm_engine"] == second["vllm_engine"] == retried["vllm_engine"]
    assert first["vllm_engine_pid"] == second["vllm_engine_pid"] == retried["vllm_engine_pid"]
    assert [m["vllm_refreshed"] for m in (first, second, retried)] == [False, True, False]
    assert first["vllm_start_seconds"] > 0 and second["vllm_start_seconds"] == retried["vllm_start_seconds"] == 0
    a, b = (pq.read_table(m["path"]).to_pylist() for m in (second, retried))
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]  # same state and seeds
    assert all(len(r["behaviour_logprobs"]) == r["completion_tokens"] > 0 for r in a)
    for it in ("iteration=0", "iteration=1"):
        assert sorted(p.name for p in (run / it).iterdir()) == ["generated.parquet", "vllm_response.parquet"]
    assert (run / ENGINE_DIR).is_dir()  # the run's engine, not an iteration's
    [engine] = resident_engines()
    processes = [psutil.Process(engine.pid), *psutil.Process(engine.pid).children(recursive=True)]
    assert len(processes) > 1  # the worker and vLLM's engine core
    close_engines()
    _, alive = psutil.wait_procs(processes, timeout=60)
    assert not alive, [p.pid for p in alive]
    assert resident_engines() == [] and not (run / ENGINE_DIR).exists()
    assert _outside_files() <= before


def test_an_engine_killed_between_stages_fails_the_next_stage_and_a_rerun_starts_a_fresh_one(setup, tmp_path):
    config = _config()
    run = tmp_path / "run=k"
    first = _stage(setup, run / "iteration=0", iteration=0, checkpoint=setup["checkpoint"], config=config)
    [engine] = resident_engines()
    engine_core = psutil.Process(engine.pid).children(recursive=True)
    os.killpg(first["vllm_engine_pid"], signal.SIGKILL)  # e.g. the OOM killer; the whole group goes
    _, alive = psutil.wait_procs(engine_core, timeout=60)  # not the worker: reaping it is the engine's business
    assert not alive
    with pytest.raises(VllmBackendError) as err:
        _stage(setup, run / "iteration=1", iteration=1, checkpoint=setup["checkpoint_b"], config=config)
    message = str(err.value)
    assert message.startswith(f"vLLM engine {first['vllm_engine']} (pid {first['vllm_engine_pid']}, "
                              f"{VLLM_PYTHON}) exited with status"), message
    assert "SIGKILL" in message.splitlines()[0]
    assert resident_engines() == [] and not (run / ENGINE_DIR).exists()
    assert not (run / "iteration=1" / "generated.parquet").exists()
    rerun = _stage(setup, run / "iteration=1", iteration=1, checkpoint=setup["checkpoint_b"], config=config)
    assert rerun["vllm_engine"] != first["vllm_engine"] and rerun["vllm_engine_pid"] != first["vllm_engine_pid"]
    assert rerun["vllm_start_seconds"] > 0 and rerun["rows"] == len(setup["samples"]) * config.group_size


def _two_iterations_on_vllm(root: Path, setup, data, demo_root, procs: int) -> list[tuple[dict, list[dict]]]:
    from care.store.rollout_log import read_rows
    from care.train import gang, warm
    from care.train.config import RLConfig
    from care.train.iteration import initial_state, run_iteration

    warm.clear()
    rollout = _config(group_size=2, prompts_per_iteration=2, generation_batch_prompts=1).model_dump()
    config = RLConfig.model_validate({
        "run_name": "vllm-gang", "model": str(setup["model"]), "data_root": str(demo_root), "shuffle_options": False,
        "iterations": 2, "seed": 0, "rollout": rollout, "scoring": {"scoring_batch_size": 2},
        # linear in the gradient (large eps): the ranks' float-rounded gradients give the same weights to ~1e-6
        "optim": {"learning_rate": 1.0, "adam_eps": 1.0, "weight_decay": 0.0, "micro_batch_size": 2,
                  "lr_scheduler": "constant", "num_processes": procs}})
    state = initial_state(config, data, checkpoints=root / "checkpoints", rollouts_root=root / "rollouts")
    ids = sorted(s.sample_id for s in data.load().samples)
    out = []
    try:
        for _ in range(2):
            result = run_iteration(config, state, data=data, sample_ids=ids, rollouts_root=root / "rollouts",
                                   timeout_s=600)
            state = result.state
            out.append((result.rollout, read_rows(Path(result.rollout["path"]))))
    finally:
        gang.close_all()
        close_engines()
    return out


def test_vllm_rollouts_on_a_two_rank_gang_equal_one_process(setup, demo_root, tmp_path):
    """backend vllm with optim.num_processes 2: the engine beside the flow, the policy folder between checkpoints
    written by rank 0, the behaviour log-probs on both ranks; the rows equal those of one process (tokens
    exactly, behaviour log-probs to 2e-5, the weights after the update differing by float rounding only)."""
    from tests.rl_helpers import cache_demo

    data = cache_demo(tmp_path / "home", Path(demo_root))
    one = _two_iterations_on_vllm(tmp_path / "one", setup, data, demo_root, 1)
    two = _two_iterations_on_vllm(tmp_path / "two", setup, data, demo_root, 2)
    for (_, rows1), (m2, rows2) in zip(one, two, strict=True):
        assert [r["completion_ids"] for r in rows1] == [r["completion_ids"] for r in rows2]
        for a, b in zip(rows1, rows2, strict=True):
            np.testing.assert_allclose(a["behaviour_logprobs"], b["behaviour_logprobs"], rtol=0, atol=2e-5)
        assert m2["engine_logprob_gap"] < 1e-2 and m2["vllm_resident"]
    assert two[0][0]["vllm_engine_pid"] == two[1][0]["vllm_engine_pid"]  # one engine for the run
    assert two[1][0]["vllm_refreshed"]  # iteration 1 ran on the policy folder the gang wrote
    assert not list((tmp_path / "two" / "rollouts").rglob(".policy-*"))
    assert not list((tmp_path / "two" / "rollouts").rglob(".completions.json"))
