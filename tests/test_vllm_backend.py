"""The ``vllm`` rollout backend: request/response files, rows, import hygiene of the worker, clear errors.

Everything up to the engine runs here on CPU with the tiny model, the demo set and a real frame cache; the
worker runs as a real subprocess (in this environment, which has no vLLM, so it must fail clearly). The engine
itself runs on CPU in ``tests/test_vllm_cpu.py`` (``make test-vllm``); the test here marked ``gpu`` runs it on a
CUDA GPU with a vLLM environment whose python is ``$CARE_VLLM_PYTHON`` (default ``.venv-vllm/bin/python``).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from care.models import vllm_worker
from care.models.loading import load_processor, suppressed_token_ids
from care.models.rollout_config import RolloutConfig
from care.models.samples import prompt_items
from care.models.vllm_backend import (
    VllmBackendError,
    build_requests,
    read_responses,
    run_worker,
    vllm_prompt_seed,
    write_requests,
)
from care.store.rollout_log import GENERATED_SCHEMA
from care.train.checkpoint import make_initial_checkpoint
from care.train.policy_io import load_policy, policy_path
from care.train.rollout import behaviour_logprobs, run_rollout_stage, shard_from_completions
from tests.rl_helpers import cached_samples

WORKER_FILE = Path(vllm_worker.__file__)
ALLOWED_THIRD_PARTY = {"numpy", "pyarrow", "vllm"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_root, tiny_model_dir):
    root = tmp_path_factory.mktemp("vllm")
    checkpoint = make_initial_checkpoint(tiny_model_dir, root / "iter-00000")
    samples, cache = cached_samples(Path(demo_root), root / "cache", 3)
    return {"root": root, "checkpoint": checkpoint, "samples": samples, "cache": cache,
            "processor": load_processor(policy_path(checkpoint))}


def _config(**kw) -> RolloutConfig:
    base = {"backend": "vllm", "group_size": 2, "generation_batch_prompts": 2,
            "sampling": {"temperature": 1.0, "top_p": 0.9, "top_k": 0, "max_new_tokens": 12}}
    return RolloutConfig(**{**base, **kw})


def test_request_file_round_trips_frames_fps_and_sampling_exactly(setup, tmp_path):
    processor, samples = setup["processor"], setup["samples"]
    items, rates = prompt_items(samples, setup["cache"])
    assert any(i.video is None for i in items) and any(i.video is not None for i in items)
    config = _config()
    seeds = [vllm_prompt_seed(7, 3, g, config.group_size) for g in range(len(items))]
    path = write_requests(tmp_path / "req.parquet", build_requests(processor, items, rates, config=config,
                                                                   seeds=seeds))
    back = vllm_worker.read_requests(path)
    assert len(back) == len(items)
    eos = processor.tokenizer.eos_token_id
    for k, (item, fps, req) in enumerate(zip(items, rates, back, strict=True)):
        assert req["prompt_index"] == k
        assert req["prompt"] == processor.apply_chat_template(item.messages, add_generation_prompt=True,
                                                              tokenize=False)
        if item.video is None:
            assert req["video"] is None and req["video_fps"] is None
            assert "video" not in vllm_worker.engine_prompt(req).get("multi_modal_data", {})
        else:
            assert req["video"].dtype == np.uint8 and np.array_equal(req["video"], item.video)
            assert req["video_fps"] == fps  # the real sampled rate, bit for bit
            prompt = vllm_worker.engine_prompt(req)
            assert prompt["mm_processor_kwargs"] == {"do_sample_frames": False}
            frames, meta = prompt["multi_modal_data"]["video"]
            assert np.array_equal(frames, item.video)
            # what the HF processor derives the temporal spacing from: sampled_fps = kept / total * fps
            assert len(meta["frames_indices"]) / meta["total_num_frames"] * meta["fps"] == fps
            assert meta["total_num_frames"] == len(item.video) and math.isclose(meta["duration"] * fps, len(item.video))
        assert req["image"].dtype == np.uint8 and np.array_equal(req["image"], item.image)
        assert req["seed"] == seeds[k]
        kw = vllm_worker.sampling_kwargs(req)
        assert kw["n"] == 2 and kw["temperature"] == 1.0 and kw["max_tokens"] == 12 and kw["logprobs"] == 0
        assert math.isclose(kw["top_p"], 0.9) and kw["top_k"] == -1  # 0 (off) is spelled -1 in vLLM
        assert kw["stop_token_ids"] == [eos]
        suppressed = suppressed_token_ids(processor)
        assert set(kw["logit_bias"]) == set(suppressed) and eos not in kw["logit_bias"]
        assert all(v == float("-inf") for v in kw["logit_bias"].values())
    assert vllm_worker.sampling_kwargs({**back[0], "top_k": 5})["top_k"] == 5
    assert len(set(seeds)) == len(seeds) and seeds[1] - seeds[0] == config.group_size  # children: seed + i


def test_read_requests_rejects_a_shape_that_does_not_match_the_bytes(setup, tmp_path):
    items, rates = prompt_items(setup["samples"][:1], setup["cache"])
    rows = build_requests(setup["processor"], items, rates, config=_config(), seeds=[1])
    rows[0]["video_shape"] = [1, 2, 3, 3]
    path = write_requests(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match=r"row 0: video has .* bytes but shape"):
        vllm_worker.read_requests(path)


def _response_rows(tokenizer, prompts: int, group: int) -> list[dict]:
    """Completions as the worker writes them: real tokens of the demo's answer format, some cut off."""
    eos = tokenizer.eos_token_id
    rows = []
    for p in range(prompts):
        for i in range(group):
            text = f"<think>The agent walks to marker {p}.</think><answer>{'ABCD'[i % 4]}</answer>"
            ids = tokenizer.encode(text, add_special_tokens=False)
            cut = i % 2 == 1
            ids = ids[:5] if cut else [*ids, eos]
            rows.append({"prompt_index": p, "sample_index": i, "token_ids": ids, "text": "engine text",
                         "finish_reason": "length" if cut else "stop",
                         "engine_logprobs": [-1.0] * len(ids), "prompt_tokens": 40 + p})
    return rows


def test_response_becomes_a_shard_with_hf_behaviour_logprobs(setup, tmp_path):
    processor, samples, checkpoint = setup["processor"], setup["samples"], setup["checkpoint"]
    tok = processor.tokenizer
    config = _config()
    items, rates = prompt_items(samples, setup["cache"])
    path = vllm_worker.write_table_atomic(tmp_path / "resp.parquet", _response_rows(tok, len(samples), 2)[::-1],
                                          vllm_worker.RESPONSE_SCHEMA)  # any row order
    completions, info = read_responses(path, prompts=len(samples), group_size=2, tokenizer=tok)
    assert [(c.prompt_index, c.sample_index) for c in completions] == [(p, i) for p in range(3) for i in range(2)]
    seeds = [vllm_prompt_seed(0, 1, g, 2) for g in range(len(samples))]
    manifest = shard_from_completions(
        run_id="r", iteration=1, state=checkpoint, samples=samples, items=items, rates=rates,
        completions=completions, prompt_tokens=info["prompt_tokens"], seeds=seeds, config=config, backend="vllm",
        seconds_per_completion=0.5, out_dir=tmp_path / "shard", started=time.perf_counter(),
        engine_logprobs=info["engine_logprobs"],
    )
    table = pq.read_table(manifest["path"])
    assert table.schema.equals(GENERATED_SCHEMA) and manifest["rows"] == table.num_rows == 6
    rows = table.to_pylist()
    assert {r["backend"] for r in rows} == {"vllm"}
    for r, c in zip(rows, completions, strict=True):
        assert r["group"] == c.prompt_index and r["sample_index"] == c.sample_index
        assert r["rollout_uid"] == f"r/1/{r['group']}/{r['sample_index']}"
        assert r["sample_id"] == samples[r["group"]].sample_id and r["seed"] == seeds[r["group"]]
        assert r["completion_ids"] == list(c.token_ids) and r["completion_tokens"] == len(c.token_ids)
        assert r["completion"] == tok.decode(list(c.token_ids), skip_special_tokens=True) != "engine text"
        assert r["truncated"] == (r["sample_index"] % 2 == 1)
        assert r["prompt_tokens"] == 40 + r["group"]
        assert len(r["behaviour_logprobs"]) == len(c.token_ids)
        assert all(math.isfinite(v) and v <= 0 for v in r["behaviour_logprobs"])
    # chunked recomputation equals one forward per completion under the same policy
    model, _ = load_policy(checkpoint)
    k = 5
    alone = behaviour_logprobs(model, processor, [items[completions[k].prompt_index]],
                               [rates[completions[k].prompt_index]], [completions[k].token_ids], temperature=1.0)[0]
    assert np.allclose(rows[k]["behaviour_logprobs"], alone, atol=1e-5)
    expected_gap = max(abs(v + 1.0) for r in rows for v in r["behaviour_logprobs"])
    assert math.isclose(manifest["engine_logprob_gap"], expected_gap, rel_tol=1e-5)


def test_response_with_missing_completions_is_refused(setup, tmp_path):
    tok = setup["processor"].tokenizer
    path = vllm_worker.write_table_atomic(tmp_path / "resp.parquet", _response_rows(tok, 2, 2)[:-1],
                                          vllm_worker.RESPONSE_SCHEMA)
    with pytest.raises(VllmBackendError, match="3 completions for 2 prompts x G=2"):
        read_responses(path, prompts=2, group_size=2, tokenizer=tok)


def test_worker_imports_only_the_standard_library_numpy_pyarrow_and_vllm():
    tree = ast.parse(WORKER_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports would pull in care"
            imported.add(node.module.split(".")[0])
    assert "vllm" in imported
    bad = {m for m in imported if m not in sys.stdlib_module_names and m not in ALLOWED_THIRD_PARTY}
    assert not bad, f"vllm_worker imports {bad}"
    # and it really imports with torch, transformers, prefect, pydantic and the rest of care blocked
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        ok = name in ('care', 'care.models', 'care.models.vllm_worker')\n"
        "        if top in ('torch', 'transformers', 'prefect', 'pydantic') or (top == 'care' and not ok):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import care.models.vllm_worker as w\n"
        "w.parse_args(['a', 'b', '--model', 'm'])\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_missing_or_wrong_vllm_python_is_a_clear_error(setup, tmp_path):
    kw = {"run_id": "r", "iteration": 0, "checkpoint": setup["checkpoint"], "samples": setup["samples"],
          "cache": setup["cache"], "seed": 0, "out_dir": tmp_path / "out"}
    with pytest.raises(VllmBackendError, match=r"needs rollout.vllm_python.*docs/vllm.md"):
        run_rollout_stage(config=_config(), **kw)
    with pytest.raises(VllmBackendError, match=r"vllm_python=.*nope/bin/python: not a file"):
        run_rollout_stage(config=_config(vllm_python=str(tmp_path / "nope/bin/python")), **kw)
    assert not (tmp_path / "out" / "generated.parquet").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this environment has vllm installed")
def test_worker_without_vllm_fails_with_a_message_the_parent_surfaces(setup, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(VllmBackendError) as err:
        run_rollout_stage(run_id="r", iteration=0, checkpoint=setup["checkpoint"], samples=setup["samples"],
                          cache=setup["cache"], config=_config(vllm_python=sys.executable), seed=0, out_dir=out)
    message = str(err.value)
    assert f"exited with status {vllm_worker.EXIT_NO_VLLM}" in message
    assert f"vllm is not installed in {sys.executable}" in message
    assert (out / "vllm_request.parquet").is_file()  # the worker read it (a bad file fails earlier)
    assert not (out / "generated.parquet").exists() and not (out / "vllm_response.parquet").exists()


def test_a_hanging_worker_times_out_with_its_stderr(tmp_path):
    command = [sys.executable, "-c", "import sys, time; print('loading weights', file=sys.stderr, flush=True); "
               "time.sleep(60)"]
    with pytest.raises(VllmBackendError, match=r"did not finish within 2 s(.|\n)*loading weights"):
        run_worker(command, timeout=2)


def _vllm_python() -> str:
    return os.environ.get("CARE_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))


def _gpu_and_vllm() -> bool:
    import torch

    if not torch.cuda.is_available() or not Path(_vllm_python()).is_file():
        return False
    probe = subprocess.run([_vllm_python(), "-c", "import vllm"], capture_output=True, timeout=300)
    return probe.returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_and_vllm(), reason="needs a CUDA GPU and vllm")
def test_vllm_rollouts_on_a_gpu(tmp_path, demo_root):
    from care.data.demo import benchmark_corpus, demo_corpus
    from care.models.tiny import TINY_VARIANTS, make_tiny_model

    # head_dim 32 (hidden 128 / 4 heads): vLLM's GPU attention kernels do not take the default tiny model's 16
    model = make_tiny_model(tmp_path / "tiny", corpus=benchmark_corpus(demo_root) + demo_corpus(), seed=0,
                            **TINY_VARIANTS["vllm"])
    checkpoint = make_initial_checkpoint(model, tmp_path / "iter-00000")
    samples, cache = cached_samples(Path(demo_root), tmp_path / "cache", 4)
    # fp32 in the engine: a GPU defaults to bf16 (engine_settings), whose gap was measured at 0.007-0.009
    config = _config(vllm_python=_vllm_python(), group_size=4, vllm_dtype="float32")
    manifest = run_rollout_stage(run_id="g", iteration=0, checkpoint=checkpoint, samples=samples, cache=cache,
                                 config=config, seed=0, out_dir=tmp_path / "out")
    rows = pq.read_table(manifest["path"]).to_pylist()
    assert manifest["rows"] == len(rows) == len(samples) * 4 and {r["backend"] for r in rows} == {"vllm"}
    assert all(len(r["behaviour_logprobs"]) == r["completion_tokens"] > 0 for r in rows)
    # the engine sampled from the same distribution the HF forward scores (temperature 1, fp32 weights)
    assert manifest["engine_logprob_gap"] < 1e-2, manifest
    assert (manifest["vllm_device"], manifest["vllm_dtype"], manifest["vllm_enforce_eager"]) == ("cuda", "float32",
                                                                                                 False)


def test_hf_backend_still_writes_its_shard_through_the_shared_row_builder(setup, tmp_path):
    config = _config(backend="hf")
    manifest = run_rollout_stage(run_id="h", iteration=2, checkpoint=setup["checkpoint"], samples=setup["samples"],
                                 cache=setup["cache"], config=config, seed=5, out_dir=tmp_path / "hf")
    table = pq.read_table(manifest["path"])
    assert table.schema.equals(GENERATED_SCHEMA) and manifest["rows"] == table.num_rows == 3 * 2
    assert set(manifest) >= {"path", "rows", "prompts", "seconds", "completion_tokens"}
    rows = table.to_pylist()
    assert {r["backend"] for r in rows} == {"hf"}
    assert [(r["group"], r["sample_index"]) for r in rows] == [(g, i) for g in range(3) for i in range(2)]
    # generation_batch_prompts=2: prompts 0-1 are chunk 0, prompt 2 is chunk 1, each seeded per chunk
    assert rows[0]["seed"] == rows[3]["seed"] != rows[4]["seed"]
    assert all(len(r["behaviour_logprobs"]) == r["completion_tokens"] for r in rows)
    assert manifest["completion_tokens"] == sum(r["completion_tokens"] for r in rows)


def test_video_metadata_gives_the_hf_processor_the_real_frame_rate(setup):
    """The metadata the worker attaches is what vLLM forwards to the HF processor (vLLM PR #47736); with it the
    processor's temporal spacing uses the real rate instead of its 24 fps default."""
    from transformers.video_utils import VideoMetadata

    processor = setup["processor"]
    items, rates = prompt_items([s for s in setup["samples"] if s.video][:1], setup["cache"])
    frames, fps = items[0].video, rates[0]
    meta = {k: v for k, v in vllm_worker.video_metadata(len(frames), fps).items() if k != "do_sample_frames"}
    text = ["<|vision_start|><|video_pad|><|vision_end|>"]
    enc = processor(text=text, videos=[frames], video_metadata=[VideoMetadata(**meta)],
                    videos_kwargs={"do_sample_frames": False}, return_tensors="pt")
    tps = processor.video_processor.temporal_patch_size
    assert math.isclose(float(enc["second_per_grid_ts"][0]), tps / fps, rel_tol=1e-6)
    bare = processor(text=text, videos=[frames], videos_kwargs={"do_sample_frames": False}, return_tensors="pt")
    assert not math.isclose(float(bare["second_per_grid_ts"][0]), tps / fps)  # what vLLM would use without it


def test_engine_settings_are_chosen_per_device_and_reach_the_worker_command(tmp_path):
    from care.models.vllm_backend import engine_settings, worker_command, worker_env

    auto = _config()
    cpu, gpu = engine_settings(auto, cuda=False), engine_settings(auto, cuda=True)
    assert (cpu.device, cpu.dtype, cpu.enforce_eager) == ("cpu", "float32", True)
    assert (gpu.device, gpu.dtype, gpu.enforce_eager) == ("cuda", "bfloat16", False)
    chosen = engine_settings(_config(vllm_dtype="bfloat16", vllm_enforce_eager=False), cuda=False)
    assert (chosen.dtype, chosen.enforce_eager) == ("bfloat16", False)
    command = worker_command("py", Path("r.parquet"), Path("s.parquet"), model=Path("m"), config=auto, seed=1,
                             engine=cpu)
    assert command[command.index("--dtype") + 1] == "float32" and "--enforce-eager" in command
    assert all(Path(command[k]).is_absolute() for k in (3, 4))  # the worker runs in its scratch folder
    assert "--enforce-eager" not in worker_command("py", Path("r"), Path("s"), model=Path("m"), config=auto,
                                                   seed=1, engine=gpu)
    args = vllm_worker.parse_args(command[3:])
    assert args.dtype == "float32" and args.enforce_eager
    env = worker_env(tmp_path / "scratch", cpu)
    for key in ("TMPDIR", "VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR"):
        assert env[key].startswith(str(tmp_path / "scratch")), key
    assert env["VLLM_RPC_BASE_PATH"] == "." and env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_worker_kills_its_process_group_when_its_parent_dies(tmp_path):
    """``watch_parent``: a parent SIGKILLed mid-generation takes the worker and its children with it."""
    import psutil

    marker = tmp_path / "started"
    worker = (f"import os, subprocess, sys, time; sys.path.insert(0, {str(REPO)!r}); "
              "from care.models.vllm_worker import watch_parent; watch_parent(0.1); "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              f"open({str(marker)!r} + '.tmp', 'w').write(str(child.pid)); os.replace({str(marker)!r} + '.tmp', "
              f"{str(marker)!r}); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', sys.argv[1]], start_new_session=True); "
                               "time.sleep(600)", worker])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    procs = psutil.Process(parent.pid).children(recursive=True)
    procs += [psutil.Process(int(marker.read_text()))]
    assert len(procs) >= 2
    parent.kill()
    parent.wait()
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive
    # in a group it does not lead (a shell, a test), it never kills anything
    assert vllm_worker.watch_parent() is None


def test_serve_mode_commands_are_parsed_strictly():
    """The resident engine's control channel: one JSON object per line, refused with a reason otherwise."""
    parse = vllm_worker.parse_command
    assert parse('{"command": "stop"}') == {"command": "stop"}
    assert parse(vllm_worker.encode_reply(command="generate", request="/q.parquet", response="/a.parquet",
                                          model="/ckpt/policy")) == {
        "command": "generate", "request": "/q.parquet", "response": "/a.parquet", "model": "/ckpt/policy"}
    assert parse('{"command": "generate", "request": "q", "response": "a", "model": null}')["model"] is None
    refused = {
        "not JSON": "not a JSON command", '["generate"]': "a command is a JSON object",
        '{"command": "sleep"}': "unknown command 'sleep'", '{"command": "generate", "response": "a"}':
        "generate needs 'request'", '{"command": "generate", "request": "q", "response": ""}':
        "generate needs 'response'", '{"command": "generate", "request": "q", "response": "a", "model": 3}':
        "'model' is a folder path or null", '{"command": "generate", "request": "q", "response": "a", "n": 1}':
        "unknown key(s) ['n']",
    }
    for line, reason in refused.items():
        with pytest.raises(ValueError, match=re.escape(reason)):
            parse(line)
    reply = vllm_worker.encode_reply(ok=True, refreshed=False)
    assert reply.endswith("\n") and "\n" not in reply[:-1] and json.loads(reply) == {"ok": True, "refreshed": False}


def test_serve_mode_arguments_and_command_line(tmp_path):
    from care.models.vllm_backend import engine_settings, serve_command

    args = vllm_worker.parse_args(["--serve", "--model", "m", "--dtype", "float32"])
    assert args.serve and args.request is None and not args.sleep
    for bad in (["--serve", "r", "s", "--model", "m"], ["--model", "m"], ["r", "s", "--model", "m", "--sleep"]):
        with pytest.raises(SystemExit):
            vllm_worker.parse_args(bad)
    config = _config()
    cpu, gpu = engine_settings(config, cuda=False), engine_settings(config, cuda=True)
    on_cpu = serve_command("py", model=tmp_path / "m", config=config, seed=4, engine=cpu)
    assert on_cpu[:4] == ["py", "-m", "care.models.vllm_worker", "--serve"] and "--sleep" not in on_cpu
    assert vllm_worker.parse_args(on_cpu[3:]).model == str((tmp_path / "m").resolve())
    on_gpu = serve_command("py", model=tmp_path / "m", config=config, seed=4, engine=gpu)
    assert vllm_worker.parse_args(on_gpu[3:]).sleep  # sleep mode only where vLLM has it: CUDA


def test_model_version_changes_when_the_folder_is_rewritten(tmp_path):
    from care.models.vllm_backend import model_version

    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a" * 10)
    first = model_version(folder)
    assert model_version(folder) == first and model_version(str(folder)) == first
    os.utime(folder / "model.safetensors", ns=(1, 1))  # rewritten (same size, other time)
    assert model_version(folder) != first
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    assert model_version(other) != model_version(folder)  # another folder is other weights until refreshed


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this environment has vllm installed")
def test_a_resident_engine_that_cannot_start_is_named_and_leaves_nothing(setup, tmp_path):
    """A serve-mode worker in a python without vLLM: its start fails with the engine's name and stderr, its
    scratch folder is removed and nothing is registered."""
    from care.models.vllm_backend import engine_settings, resident_engine, resident_engines

    config = _config(vllm_python=sys.executable)
    with pytest.raises(VllmBackendError) as err:
        resident_engine(sys.executable, model_dir=policy_path(setup["checkpoint"]), config=config, seed=0,
                        engine=engine_settings(config, cuda=False), scratch=tmp_path / "engine")
    message = str(err.value)
    assert re.match(rf"vLLM engine vllm-engine-\d+ \(pid \d+, {re.escape(sys.executable)}\) exited with status "
                    rf"{vllm_worker.EXIT_NO_VLLM} while starting", message), message
    assert f"vllm is not installed in {sys.executable}" in message
    assert not (tmp_path / "engine").exists() and resident_engines() == []
