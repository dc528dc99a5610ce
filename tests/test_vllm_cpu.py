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
* a ``care rl`` run with ``rollout.backend: vllm`` whose rollouts ``care sql`` lists with ``backend = 'vllm'``.
"""

from __future__ import annotations

import json
import math
import os
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
from care.models.tiny import TINY_VARIANTS, make_tiny_model
from care.models.vllm_backend import (
    VllmBackendError,
    build_requests,
    engine_settings,
    run_worker,
    worker_command,
    write_requests,
)
from care.store.rollout_log import GENERATED_SCHEMA
from care.train.checkpoint import make_initial_checkpoint
from care.train.config import RolloutConfig
from care.train.policy_io import policy_path
from care.train.rollout import run_rollout_stage
from care.train.samples import prompt_items
from tests.vllm_helpers import cached_samples

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


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_root):
    root = tmp_path_factory.mktemp("vllm-cpu")
    model = make_tiny_model(root / "tiny-vllm", corpus=benchmark_corpus(demo_root) + demo_corpus(), seed=0,
                            **TINY_VARIANTS["vllm"])
    checkpoint = make_initial_checkpoint(model, root / "iter-00000")
    samples, cache = cached_samples(Path(demo_root), root / "cache", 3)
    return {"root": root, "model": model, "checkpoint": checkpoint, "samples": samples, "cache": cache,
            "processor": load_processor(policy_path(checkpoint))}


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
    config = _config(group_size=2)
    kw = {"run_id": "v", "iteration": 1, "checkpoint": setup["checkpoint"], "samples": setup["samples"],
          "cache": setup["cache"], "config": config, "seed": 3}
    before = _outside_files()
    first = run_rollout_stage(out_dir=tmp_path / "a", **kw)
    second = run_rollout_stage(out_dir=tmp_path / "b", **kw)
    assert _outside_files() <= before
    assert (first["vllm_device"], first["vllm_dtype"], first["vllm_enforce_eager"]) == ("cpu", "float32", True)
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
    assert f"vLLM worker ({VLLM_PYTHON}) exited with status" in message
    assert "care.models.vllm_worker: vllm 0.32.0, dtype float32, enforce_eager True" not in message.splitlines()[0]
    assert len(message.splitlines()) > 2, message  # the stderr tail, not just a status
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vllm_request.parquet"]


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
    assert not list(home.rglob(".vllm-scratch")) and not list(home.rglob("vllm_request.parquet"))
