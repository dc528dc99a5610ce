"""The ``vllm`` rollout backend, main-environment side: prompt items -> request file -> vLLM subprocess ->
completions (``generate_vllm``). The rollout stage turns them into its shard (``care.train.rollout``).

vLLM cannot share an environment with Prefect (their fastapi pins conflict), so it runs in its own virtual
environment (``docs/vllm.md``) as ``python -m care.models.vllm_worker`` and the two sides exchange two Parquet
files in the iteration's output folder:

1. ``vllm_request.parquet`` (``vllm_worker.REQUEST_SCHEMA``), one row per prompt: the prompt rendered with the
   policy processor's chat template (+ the assistant header), the cached frames as raw uint8 bytes with their
   shape and real sampled fps, the image likewise, G, the sampling parameters with a per-prompt seed, the token
   ids to suppress (``suppressed_token_ids``, as the ``hf`` backend) and the stop tokens
   (``rollout.sampling.eos``, the ``hf`` backend's).
2. the worker loads ``<checkpoint>/policy`` (a save_pretrained folder with the processor) in vLLM, samples, and
   writes ``vllm_response.parquet`` (``vllm_worker.RESPONSE_SCHEMA``), one row per completion.
3. here: the completions are read back, their text decoded with the policy tokenizer as in the ``hf`` backend.
   The rollout stage then recomputes the behaviour log-probs with the HF policy forward (the function the
   ``hf`` backend and the update use), so the optimisation stage's PPO ratio starts at exactly 1 whatever
   vLLM's numerics; the engine's own log-probs are only compared (``logprob_gap``).

Life cycle (``rollout.vllm_resident``, docs/vllm.md "The engine's life cycle"): by default one engine serves
every rollout stage of a run (``ResidentEngine``, ``python -m care.models.vllm_worker --serve``), kept in a
module-level registry (``resident_engine``) and refreshed with the stage's weights through vLLM's in-place
``reload_weights``; ``close_engines`` stops them (the flow calls it at the end of a run; also registered with
atexit). ``vllm_resident: false`` starts a fresh one-shot worker per stage (``run_worker``).

Seeds: prompt g of the iteration gets ``vllm_prompt_seed`` = base + g * G; vLLM seeds child i with seed + i, so
no two completions of an iteration share a seed. Engine settings (dtype, eager) are chosen per device
(``engine_settings``). Tested on CPU without vLLM (``tests/test_vllm_backend.py``: files, rows, errors) and with
the CPU build of vLLM (``tests/test_vllm_cpu.py``, ``make test-vllm``: the engine itself, the stage, a ``care rl``
run); ``test_vllm_rollouts_on_a_gpu`` (marked ``gpu``) runs the stage on a CUDA GPU.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import care
from care.errors import CareError
from care.models.generation import Completion, chunk_seed
from care.models.inputs import PromptItem
from care.models.loading import stop_token_ids, suppressed_token_ids
from care.models.rollout_config import RolloutConfig
from care.models.vllm_worker import REQUEST_SCHEMA, RESPONSE_SCHEMA, encode_reply, write_table_atomic

REQUEST_FILE = "vllm_request.parquet"
RESPONSE_FILE = "vllm_response.parquet"
WORKER_MODULE = "care.models.vllm_worker"
WORKER_TIMEOUT_S = 4 * 3600  # engine start-up (minutes for a 7B model) plus generation of one iteration
STDERR_TAIL_LINES = 25
SCRATCH_DIR = ".vllm-scratch"  # in the iteration's folder, removed when the worker has exited
ENGINE_DIR = ".vllm-engine"  # the resident engine's scratch: next to the iterations of a run, removed at close
IPC_DIR = "ipc"  # in the scratch folder: the worker's working directory, where the engine's sockets go
STOP_TIMEOUT_S = 60  # a stopping engine gets this long to exit before its process group is killed

log = logging.getLogger(__name__)


class VllmBackendError(CareError):
    """The vLLM environment is missing or misconfigured, or the worker failed; the message says what to do."""


def vllm_prompt_seed(seed: int, iteration: int, group: int, group_size: int) -> int:
    """Request seed of prompt ``group``: G apart per prompt, since vLLM samples child i with seed + i."""
    return (chunk_seed(seed, iteration, 0) + group * group_size) % (2**62)


def resolve_vllm_python(vllm_python: str | None) -> Path:
    """The configured python of the vLLM environment, checked to be an executable file."""
    if not vllm_python:
        raise VllmBackendError("rollout.backend=vllm needs rollout.vllm_python: the python of a separate vLLM "
                               "environment, e.g. .venv-vllm/bin/python (see docs/vllm.md)")
    path = Path(vllm_python).expanduser()
    if not path.is_file():
        raise VllmBackendError(f"rollout.vllm_python={vllm_python}: not a file; create the vLLM environment as "
                               "docs/vllm.md describes and give the path of its bin/python")
    if not os.access(path, os.X_OK):
        raise VllmBackendError(f"rollout.vllm_python={vllm_python}: not executable")
    return path


def _raw(array: np.ndarray | None) -> tuple[bytes | None, list[int] | None]:
    if array is None:
        return None, None
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"visual inputs must be uint8, got {array.dtype}")
    return array.tobytes(), [int(d) for d in array.shape]


def build_requests(processor, items: Sequence[PromptItem], rates: Sequence[float | None], *, config: RolloutConfig,
                   seeds: Sequence[int]) -> list[dict]:
    """``REQUEST_SCHEMA`` rows, one per prompt item (``rates[k]``: the frames' fps, None without a video)."""
    s = config.sampling
    stop = stop_token_ids(processor, s.eos)
    suppress = suppressed_token_ids(processor, stop=stop)
    tps = processor.video_processor.temporal_patch_size
    rows = []
    for k, (item, fps, seed) in enumerate(zip(items, rates, seeds, strict=True)):
        video, video_shape = _raw(item.video)
        image, image_shape = _raw(item.image)
        if video is not None and not (fps or 0) > 0:
            raise ValueError(f"prompt {k}: a video needs a positive fps, got {fps}")
        if video is not None and item.seconds_per_grid is not None:
            # the engine derives seconds per temporal patch as temporal_patch_size / fps: give it the rate
            # that yields the item's fixed value (frames.temporal: fixed_1s), as care.models.inputs does
            fps = tps / item.seconds_per_grid
        rows.append({
            "prompt_index": k,
            "prompt": processor.apply_chat_template(item.messages, add_generation_prompt=True, tokenize=False),
            "video": video, "video_shape": video_shape, "video_fps": float(fps) if video is not None else None,
            "image": image, "image_shape": image_shape, "n": config.group_size, "temperature": s.temperature,
            "top_p": s.top_p, "top_k": s.top_k, "max_tokens": s.max_new_tokens, "seed": int(seed),
            "suppress_token_ids": suppress, "stop_token_ids": stop,
        })
    return rows


def write_requests(path: str | Path, rows: Sequence[dict]) -> Path:
    return write_table_atomic(Path(path), list(rows), REQUEST_SCHEMA)


@dataclass(frozen=True)
class EngineSettings:
    """How the worker runs vLLM: chosen per device from the rollout config (``engine_settings``), logged and
    recorded in the stage manifest."""

    device: str  # "cuda" or "cpu": where the engine runs (the machine of this process)
    dtype: str  # float32 | bfloat16 | float16
    enforce_eager: bool
    cpu_kvcache_gib: int

    def describe(self) -> str:
        return (f"vLLM engine on {self.device}: dtype {self.dtype}, "
                f"{'eager' if self.enforce_eager else 'compiled (torch.compile + CUDA graphs)'}")


def engine_settings(config: RolloutConfig, *, cuda: bool | None = None) -> EngineSettings:
    """Resolve ``vllm_dtype`` / ``vllm_enforce_eager`` 'auto' for this machine.

    On a GPU: bf16 and compiled, vLLM's own defaults for serving. On CPU: fp32 (the engine's log-probs then agree
    with the HF forward's to about 2e-3, against 9e-3 in bf16) and eager (compilation costs about a minute per
    engine start there and makes generation slower, docs/vllm.md)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = config.vllm_dtype if config.vllm_dtype != "auto" else ("bfloat16" if cuda else "float32")
    eager = config.vllm_enforce_eager if config.vllm_enforce_eager is not None else not cuda
    return EngineSettings(device=device, dtype=dtype, enforce_eager=eager, cpu_kvcache_gib=config.vllm_cpu_kvcache_gib)


def engine_options(*, model: Path, config: RolloutConfig, seed: int, engine: EngineSettings) -> list[str]:
    """The worker's engine arguments, the same in both modes (absolute paths: it runs in its scratch folder)."""
    options = ["--model", str(Path(model).resolve()),
               "--tensor-parallel-size", str(config.vllm_tensor_parallel_size),
               "--gpu-memory-utilization", str(config.vllm_gpu_memory_utilization), "--seed", str(seed),
               "--dtype", engine.dtype]
    return [*options, "--enforce-eager"] if engine.enforce_eager else options


def worker_command(python: str | Path, request: Path, response: Path, *, model: Path,
                   config: RolloutConfig, seed: int, engine: EngineSettings) -> list[str]:
    """The one-shot worker's command line: one request file answered, then it exits."""
    return [str(python), "-m", WORKER_MODULE, str(Path(request).resolve()), str(Path(response).resolve()),
            *engine_options(model=model, config=config, seed=seed, engine=engine)]


def worker_env(scratch: Path, engine: EngineSettings | None = None) -> dict[str, str]:
    """The worker's environment: everything vLLM, torch.compile and Triton would write under /tmp or ~ goes to
    ``scratch`` instead (caches, compiled kernels, the engine's IPC sockets), so a finished or killed worker
    leaves nothing outside the iteration's folder; usage statistics off.

    The checkout holding ``care`` goes first on PYTHONPATH, so the worker module is found even where the vLLM
    environment lacks the editable install."""
    env = dict(os.environ)
    root = str(Path(care.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    tmp = scratch / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (scratch / IPC_DIR).mkdir(exist_ok=True)
    # The engine's ZeroMQ sockets are ipc://{VLLM_RPC_BASE_PATH}/{uuid}, and a socket path must fit in 107 bytes,
    # which a workspace path need not: "." names the worker's working directory, scratch/ipc (run_worker).
    env.update(TMPDIR=str(tmp), VLLM_RPC_BASE_PATH=".", VLLM_CACHE_ROOT=str(scratch / "vllm-cache"),
               VLLM_CONFIG_ROOT=str(scratch / "vllm-config"), XDG_CACHE_HOME=str(scratch / "cache"),
               TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"), TRITON_CACHE_DIR=str(scratch / "triton"),
               NUMBA_CACHE_DIR=str(scratch / "numba"), VLLM_NO_USAGE_STATS="1", VLLM_DO_NOT_TRACK="1",
               DO_NOT_TRACK="1")
    if engine is not None and engine.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kvcache_gib))
    return env


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's process group: the worker and the engine-core processes vLLM forks."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_worker(command: Sequence[str], *, timeout: float = WORKER_TIMEOUT_S, scratch: Path | None = None,
               engine: EngineSettings | None = None) -> str:
    """Run the worker in a process group of its own; return its stderr.

    A non-zero exit or a timeout raises ``VllmBackendError`` with the stderr tail. On any exit (success, error,
    timeout, or this process being interrupted) the whole group is killed and ``scratch`` removed, so no engine
    process or cache file outlives the stage. Should this process die (SIGKILL included), the worker notices
    and kills its group (``vllm_worker.watch_parent``); ``scratch`` then stays, and the next run empties it
    first. Without ``scratch`` a temporary folder is used.
    """
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="care-vllm-"))
    else:
        shutil.rmtree(scratch, ignore_errors=True)  # what a killed predecessor left
        scratch.mkdir(parents=True)
    env = worker_env(scratch, engine)
    stderr_path = scratch / "worker.stderr"
    try:
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(list(command), env=env, cwd=scratch / IPC_DIR, stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise VllmBackendError(f"vLLM worker ({command[0]}) did not finish within {timeout:.0f} s; "
                                       f"last stderr lines:\n{_tail(stderr_path.read_text(errors='replace'))}"
                                       ) from None
            except BaseException:
                _kill_group(proc)
                raise
            _kill_group(proc)  # the engine-core processes, should vLLM have left any behind
        stderr = stderr_path.read_text(errors="replace")
        if code != 0:
            raise VllmBackendError(f"vLLM worker ({command[0]}) exited with status {code}:\n"
                                   f"{_tail(stderr) or '(no stderr)'}")
        return stderr
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_responses(path: str | Path, *, prompts: int, group_size: int, tokenizer) -> tuple[list[Completion], dict]:
    """Completions (prompt-major, as the ``hf`` backend's) and per-prompt info from a response file.

    Checks that every prompt has exactly ``group_size`` completions. The text is decoded here with the policy
    tokenizer (``skip_special_tokens``, as the ``hf`` backend); ``truncated`` is vLLM's finish reason "length".
    Returns (completions, {"prompt_tokens": [per prompt], "engine_logprobs": [per completion]}).
    """
    table = pq.read_table(path)
    missing = [f.name for f in RESPONSE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise VllmBackendError(f"{path}: response file lacks column(s) {missing}; the worker and this checkout "
                               "differ in version")
    rows = sorted(table.to_pylist(), key=lambda r: (r["prompt_index"], r["sample_index"]))
    keys = [(r["prompt_index"], r["sample_index"]) for r in rows]
    expected = [(p, i) for p in range(prompts) for i in range(group_size)]
    if keys != expected:
        raise VllmBackendError(f"{path}: {len(rows)} completions for {prompts} prompts x G={group_size}, "
                               "or wrong prompt/sample indices; re-run the rollout stage")
    prompt_tokens = [0] * prompts
    completions, engine = [], []
    for r in rows:
        ids = tuple(int(t) for t in r["token_ids"])
        completions.append(Completion(prompt_index=r["prompt_index"], sample_index=r["sample_index"], token_ids=ids,
                                      text=tokenizer.decode(list(ids), skip_special_tokens=True),
                                      truncated=r["finish_reason"] == "length"))
        prompt_tokens[r["prompt_index"]] = int(r["prompt_tokens"])
        engine.append(list(r["engine_logprobs"]))
    return completions, {"prompt_tokens": prompt_tokens, "engine_logprobs": engine}


def logprob_gap(behaviour: Sequence[Sequence[float]], engine: Sequence[Sequence[float]]) -> float:
    """Largest |HF - engine| log-prob over all sampled tokens (0.0 when the engine returned none)."""
    gaps = [abs(a - b) for hf, en in zip(behaviour, engine, strict=True) if en
            for a, b in zip(hf, en, strict=True)]
    return max(gaps, default=0.0)


def serve_command(python: str | Path, *, model: Path, config: RolloutConfig, seed: int,
                  engine: EngineSettings) -> list[str]:
    """The resident engine's command line: the worker's serve mode, sleeping between stages on a GPU."""
    command = [str(python), "-m", WORKER_MODULE, "--serve",
               *engine_options(model=model, config=config, seed=seed, engine=engine)]
    return [*command, "--sleep"] if engine.device == "cuda" else command


def model_version(model_dir: str | Path) -> str:
    """What identifies the weights of a model folder for the resident engine: its path and the name, size and
    modification time of each file in it. A folder rewritten in place (a new save_pretrained) gets a new
    version, so the engine refreshes; the same folder again (a retried stage) does not."""
    folder = Path(model_dir).resolve()
    h = hashlib.sha256(str(folder).encode())
    for f in sorted(folder.iterdir()) if folder.is_dir() else ():
        if f.is_file():
            st = f.stat()
            h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class ResidentEngine:
    """One vLLM engine in a serve-mode worker (``python -m care.models.vllm_worker --serve``), started once and
    asked to generate stage after stage, its weights refreshed whenever the stage's model folder changes.

    The worker runs as ``run_worker``'s does: a process group of its own (``close`` kills it), the environment
    of ``worker_env`` with ``scratch`` as its scratch folder (which ``close`` removes; it must outlive the
    stages: one per run) and the orphan guard ``vllm_worker.watch_parent`` (this process killed -> the engine
    goes within half a second; its stdin closing ends it as well). Commands and replies are JSON lines on the
    worker's stdin / stdout (``vllm_worker.parse_command``); its stderr goes to ``scratch/engine.stderr``.

    A worker that has exited or closed its channel, or a failed command, raises ``VllmBackendError`` naming
    the engine with its stderr tail; the engine is then closed and never used again (``resident_engine``
    starts a fresh one on the next call)."""

    _count = 0

    def __init__(self, python: str | Path, *, model_dir: str | Path, config: RolloutConfig, seed: int,
                 engine: EngineSettings, scratch: str | Path, timeout: float = WORKER_TIMEOUT_S) -> None:
        ResidentEngine._count += 1
        self.name = f"vllm-engine-{ResidentEngine._count}"
        self.python, self.settings, self.scratch, self.timeout = str(python), engine, Path(scratch), timeout
        self.command = serve_command(python, model=Path(model_dir), config=config, seed=seed, engine=engine)
        self.proc: subprocess.Popen | None = None
        self.loaded: str | None = None  # model_version of the weights the engine holds
        self.start_seconds = 0.0
        self.generations = 0  # generate commands answered
        self._buffer = b""
        self._lock = threading.Lock()
        self._start(Path(model_dir))

    # -- process ------------------------------------------------------------------------------------------
    def _start(self, model_dir: Path) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)  # what a killed predecessor left
        self.scratch.mkdir(parents=True)
        env = worker_env(self.scratch, self.settings)
        t0 = time.perf_counter()
        with (self.scratch / "engine.stderr").open("w") as err:
            self.proc = subprocess.Popen(self.command, env=env, cwd=self.scratch / IPC_DIR, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        try:
            ready = self._reply("starting", timeout=self.timeout)
        except BaseException:
            self.close(graceful=False)
            raise
        if ready.get("event") != "ready":
            self.close(graceful=False)
            raise VllmBackendError(f"{self.describe()} sent {ready} instead of its ready line")
        self.loaded = model_version(model_dir)
        self.start_seconds = time.perf_counter() - t0
        log.info("%s started in %.1f s (%s, pid %d)", self.name, self.start_seconds, self.settings.describe(),
                 self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> str:
        return f"vLLM engine {self.name} (pid {self.pid}, {self.python})"

    def stderr_tail(self) -> str:
        path = self.scratch / "engine.stderr"
        return _tail(path.read_text(errors="replace")) if path.is_file() else ""

    def _gone(self, doing: str) -> VllmBackendError:
        """The error for a worker that exited or closed its channel; the engine is closed."""
        code = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=5)
        tail = self.stderr_tail() or "(no stderr)"
        status = f"exited with status {code}" if code is not None else "closed its control channel"
        if code is not None and code < 0:
            status += f" (killed by {signal.Signals(-code).name})"
        error = VllmBackendError(f"{self.describe()} {status} while {doing}; last stderr lines:\n{tail}")
        self.close(graceful=False)
        return error

    # -- channel ------------------------------------------------------------------------------------------
    def _send(self, command: dict, doing: str) -> None:
        if not self.alive():
            raise self._gone(doing)
        try:
            self.proc.stdin.write(encode_reply(**command).encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._gone(doing) from None

    def _reply(self, doing: str, *, timeout: float) -> dict:
        """The next JSON line from the worker; VllmBackendError when it dies, closes the channel or takes
        longer than ``timeout``."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(graceful=False)
                raise VllmBackendError(f"{self.describe()} did not answer within {timeout:.0f} s while {doing}; "
                                       f"last stderr lines:\n{self.stderr_tail()}")
            readable, _, _ = select.select([fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise self._gone(doing)
                self._buffer += chunk
            elif self.proc.poll() is not None:
                raise self._gone(doing)
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            self.close(graceful=False)
            raise VllmBackendError(f"{self.describe()} wrote {line[:200]!r} on its control channel while {doing}")
        return reply

    # -- commands -----------------------------------------------------------------------------------------
    def generate(self, request: str | Path, response: str | Path, *, model_dir: str | Path) -> dict:
        """Answer ``request`` into ``response`` with the weights of ``model_dir``: refreshed first unless the
        engine already holds them (``model_version``). Returns the worker's reply (``refreshed``,
        ``refresh_seconds``, ``generate_seconds``, ``prompts``, ``completions``)."""
        with self._lock:
            version = model_version(model_dir)
            refresh = version != self.loaded
            command = {"command": "generate", "request": str(Path(request).resolve()),
                       "response": str(Path(response).resolve()),
                       "model": str(Path(model_dir).resolve()) if refresh else None}
            doing = f"generating {Path(request).name}" + (f" after a refresh from {model_dir}" if refresh else "")
            self.loaded = None  # unknown until the worker confirms
            self._send(command, doing)
            reply = self._reply(doing, timeout=self.timeout)
            if not reply.get("ok"):
                error = VllmBackendError(f"{self.describe()} failed {doing}: {reply.get('error')}; last stderr "
                                         f"lines:\n{self.stderr_tail()}")
                self.close(graceful=False)  # its state (half-loaded weights, a dead engine core) is unknown
                raise error
            self.loaded = version
            self.generations += 1
            return reply

    def close(self, *, graceful: bool = True) -> None:
        """Stop the engine (``stop``, then the process group killed once the worker has exited or after
        ``STOP_TIMEOUT_S``; at once when not ``graceful``) and remove its scratch folder. Idempotent."""
        _unregister(self)
        proc, self.proc = self.proc, None
        if proc is not None:
            if graceful and proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.write(encode_reply(command="stop").encode())
                    proc.stdin.flush()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT_S)
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
            self.proc = proc  # for describe() in messages; poll() says it is gone
            _kill_group(proc)  # the engine-core processes, should vLLM have left any
        shutil.rmtree(self.scratch, ignore_errors=True)


_ENGINES: dict[tuple, ResidentEngine] = {}
_REGISTRY_LOCK = threading.Lock()
_START_LOCK = threading.Lock()


def _unregister(engine: ResidentEngine) -> None:
    with _REGISTRY_LOCK:
        for key in [k for k, e in _ENGINES.items() if e is engine]:
            del _ENGINES[key]


def engine_key(python: str | Path, *, config: RolloutConfig, seed: int, engine: EngineSettings,
               scratch: str | Path) -> tuple:
    """What a resident engine is shared by: the vLLM python, the engine settings, tensor parallelism, memory
    share, engine seed and its scratch folder (one per run: ``care.train.rollout`` puts it next to the run's
    iteration folders)."""
    return (str(Path(python).resolve()), engine, config.vllm_tensor_parallel_size,
            config.vllm_gpu_memory_utilization, int(seed), str(Path(scratch).resolve()))


def resident_engine(python: str | Path, *, model_dir: str | Path, config: RolloutConfig, seed: int,
                    engine: EngineSettings, scratch: str | Path) -> ResidentEngine:
    """The registered engine of ``engine_key``, or a new one started on ``model_dir``.

    A registered engine is returned even if it has died meanwhile: its next command then raises
    ``VllmBackendError`` (the stage fails, naming it) and unregisters it, and the stage's re-run starts a fresh
    one. So an engine crash is reported, never papered over by a silent restart in every iteration."""
    key = engine_key(python, config=config, seed=seed, engine=engine, scratch=scratch)
    with _START_LOCK:  # one start at a time, so two stages never start two engines for one key
        with _REGISTRY_LOCK:
            current = _ENGINES.get(key)
        if current is not None:
            return current
        started = ResidentEngine(python, model_dir=model_dir, config=config, seed=seed, engine=engine,
                                 scratch=scratch)
        with _REGISTRY_LOCK:
            _ENGINES[key] = started
        return started


def resident_engines() -> list[ResidentEngine]:
    """The engines registered now (started, not closed)."""
    with _REGISTRY_LOCK:
        return list(_ENGINES.values())


def close_engines() -> None:
    """Stop every resident engine of this process and remove their scratch folders: call it at the end of an
    RL run (also registered with atexit)."""
    for engine in resident_engines():
        engine.close()


atexit.register(close_engines)


@dataclass(frozen=True)
class VllmGeneration:
    """What the engine returned for one stage: completions (prompt-major), the expanded prompt lengths, the
    engine's own log-probs of the sampled tokens, the wall time of the engine work (start-up and refresh
    included) and the settings it ran with; for a resident engine also its name and pid, and what the stage
    spent starting it (0 when it was running already) and refreshing its weights (0 when they were current)."""

    completions: list[Completion]
    prompt_tokens: list[int]
    engine_logprobs: list[list[float]]
    seconds: float
    engine: EngineSettings
    engine_name: str | None = None
    engine_pid: int | None = None
    start_seconds: float = 0.0
    refresh_seconds: float = 0.0
    refreshed: bool = False


def vllm_prompt_seeds(seed: int, iteration: int, prompts: int, group_size: int) -> list[int]:
    """The request seed of each prompt of an iteration (``vllm_prompt_seed``)."""
    return [vllm_prompt_seed(seed, iteration, g, group_size) for g in range(prompts)]


def generate_vllm(processor, items: Sequence[PromptItem], rates: Sequence[float | None], *, seeds: Sequence[int],
                  model_dir: str | Path, config: RolloutConfig, seed: int, work_dir: str | Path,
                  engine_dir: str | Path | None = None) -> VllmGeneration:
    """The ``vllm`` rollout backend: ``config.group_size`` completions per prompt item from the model folder
    ``model_dir``, sampled by the worker in the vLLM environment.

    ``rates[k]``: the fps of item k's frames; ``seeds[k]``: its request seed; ``seed``: the engine's. The request
    and response files live in ``work_dir``; the request (raw frames) is removed once answered, the response
    kept for inspection.

    With ``config.vllm_resident`` the resident engine of ``engine_dir`` (its scratch folder, which must
    outlive the stage; default ``work_dir/../.vllm-engine``, one per run in the rollout log's layout) answers,
    started on first use and refreshed to ``model_dir``'s weights when they changed; otherwise a fresh
    one-shot worker does, with its scratch folder in ``work_dir``."""
    python = resolve_vllm_python(config.vllm_python)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    request, response = work_dir / REQUEST_FILE, work_dir / RESPONSE_FILE
    write_requests(request, build_requests(processor, items, rates, config=config, seeds=seeds))
    response.unlink(missing_ok=True)  # never read a previous attempt's answer
    engine = engine_settings(config)
    log.info("%s (rollout.vllm_dtype=%s, rollout.vllm_enforce_eager=%s)", engine.describe(), config.vllm_dtype,
             config.vllm_enforce_eager)
    t0 = time.perf_counter()
    extra: dict = {}
    if config.vllm_resident:
        scratch = Path(engine_dir) if engine_dir is not None else work_dir.parent / ENGINE_DIR
        served = resident_engine(python, model_dir=model_dir, config=config, seed=seed, engine=engine,
                                 scratch=scratch)
        starting = served.start_seconds if served.generations == 0 else 0.0  # this stage started it
        reply = served.generate(request, response, model_dir=model_dir)
        extra = {"engine_name": served.name, "engine_pid": served.pid, "start_seconds": starting,
                 "refresh_seconds": float(reply["refresh_seconds"]) if reply["refreshed"] else 0.0,
                 "refreshed": bool(reply["refreshed"])}
    else:
        run_worker(worker_command(python, request, response, model=Path(model_dir), config=config, seed=seed,
                                  engine=engine), scratch=work_dir / SCRATCH_DIR, engine=engine)
    seconds = time.perf_counter() - t0
    request.unlink()
    completions, info = read_responses(response, prompts=len(items), group_size=config.group_size,
                                       tokenizer=processor.tokenizer)
    return VllmGeneration(completions=completions, prompt_tokens=info["prompt_tokens"],
                          engine_logprobs=info["engine_logprobs"], seconds=seconds, engine=engine, **extra)
